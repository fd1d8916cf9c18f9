"""Training: one shared loop (`run`) and one small module per objective.

- `minigpt.train.sft`: supervised fine-tuning on demonstrations (InstructGPT step 1);
- `minigpt.train.reward`: a reward model on preference comparisons (step 2);
- `minigpt.train.dpo`: direct preference optimisation on the same comparisons;
- `minigpt.train.lm`: language modelling on raw text (pretraining; the corpus in `minigpt.train.corpus`);
- `minigpt.train.ppo`: PPO against a reward with a KL penalty to the start policy (step 3; the arithmetic in
  `minigpt.train.rl`, sampling in `minigpt.train.rollout`, rewards in `minigpt.train.scorers`).
"""

from .config import TrainConfig, TrainingError
from .dpo import DPO, DPOConfig, train_dpo
from .lm import LM, PretrainConfig, train_lm
from .objective import Objective, StepResult
from .optim import EpochSampler, lr_at, micro_batches, param_groups
from .ppo import PPO, PPOConfig, train_ppo
from .reward import Reward, RewardConfig, train_reward_model
from .run import TrainResult, run_training
from .sft import SFT, ResponseLoss, evaluate, resume, train
from .state import STATE_FILE, TENSOR_STATE_FILE

__all__ = [
    "DPO",
    "DPOConfig",
    "LM",
    "PretrainConfig",
    "train_lm",
    "PPO",
    "PPOConfig",
    "StepResult",
    "train_ppo",
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
