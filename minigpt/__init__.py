"""minigpt: a compact, exact and fast PyTorch reimplementation of GPT-2."""

from .config import GPTConfig
from .errors import CheckpointError, ConfigError, GenerationError, MiniGPTError, TokenizerError
from .model import GPT, KVCache
from .reward_model import RewardModel
from .tokenizer import Tokenizer

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "RewardModel",
    "Tokenizer",
    "MiniGPTError",
    "CheckpointError",
    "ConfigError",
    "GenerationError",
    "TokenizerError",
]
__version__ = "0.1.0"
