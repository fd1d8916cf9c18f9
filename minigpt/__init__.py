"""minigpt: a compact, exact and fast PyTorch reimplementation of GPT-2.

The public faces: `GPT` (the network of `minigpt.model` with loading and generation), `RewardModel`,
`Tokenizer`, `GPTConfig` and the errors; `minigpt.inference` (`minigpt.text`, `minigpt.sampling`,
`minigpt.scoring` are its modules under their older names) and `minigpt.train`. Layers, lowest first, import
only downward: core (config, model, kernels) <- io (hub, loading, checkpoint, tokenizer) <- inference <- train
<- cli.
"""

from .config import GPTConfig
from .errors import CheckpointError, ConfigError, DataError, GenerationError, MiniGPTError, TokenizerError
from .inference.generation import GenerationMixin
from .inspect import InspectMixin
from .loading import PretrainedMixin
from .model import KVCache, Transformer
from .reward_model import RewardModel
from .tokenizer import Tokenizer


class GPT(InspectMixin, GenerationMixin, PretrainedMixin, Transformer):
    """GPT-2 language model: `model(input_ids)` returns logits [B, T, V].

    The network is `minigpt.model.Transformer`; `from_pretrained` / `save_pretrained` come from
    `minigpt.loading.PretrainedMixin` and `generate` / `generate_stream` from
    `minigpt.inference.generation.GenerationMixin`, `run_with_cache` / `run_with_hooks` / `hooks` from
    `minigpt.inspect.InspectMixin`.
    """


__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "RewardModel",
    "Tokenizer",
    "Transformer",
    "MiniGPTError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "GenerationError",
    "TokenizerError",
]
__version__ = "0.1.0"
