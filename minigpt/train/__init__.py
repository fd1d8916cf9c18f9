"""Training: one shared loop (`run`) and one small module per objective.

- `minigpt.train.sft`: supervised fine-tuning on demonstrations (InstructGPT step 1);
- `minigpt.train.reward`: a reward model on preference comparisons (step 2);
- `minigpt.train.dpo`: direct preference optimisation on the same comparisons.
"""

from .config import TrainConfig, TrainingError
from .dpo import DPO, DPOConfig, train_dpo
from .reward import Reward, RewardConfig, train_reward_model
from .optim import EpochSampler, lr_at, micro_batches, param_groups
from .run import Objective, TrainResult, run_training
from .sft import SFT, ResponseLoss, evaluate, resume, train
from .state import STATE_FILE, TENSOR_STATE_FILE

__all__ = [
    "DPO",
    "DPOConfig",
    "Reward",
    "RewardConfig",
    "train_dpo",
    "train_reward_model",
    "EpochSampler",
    "Objective",
    "ResponseLoss",
    "SFT",
    "STATE_FILE",
    "TENSOR_STATE_FILE",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "lr_at",
    "micro_batches",
    "param_groups",
    "resume",
    "run_training",
    "train",
]
