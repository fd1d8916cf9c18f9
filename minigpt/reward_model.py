"""A reward model: GPT-2's body and a scalar head, read at each row's last real token (InstructGPT step 2).

Parameter names are transformers' `GPT2ForSequenceClassification` (`transformer.*`, `score.weight` [1, C], no
bias), so a saved reward model loads there with the same rewards. The reading position is transformers' rule:
the rightmost token that is not padding, where padding is the EOS id (GPT-2 has no pad token). A trailing EOS
therefore counts as padding, and the reward is read at the token before it, in both libraries.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import GPTConfig
from .model import GPT


def reward_positions(input_ids: Tensor, pad_id: int, attention_mask: Tensor | None = None) -> Tensor:
    """Index [B] of each row's rightmost token that is neither `pad_id` nor masked; 0 for a row with none.

    Works for right and left padding alike (transformers' GPT2ForSequenceClassification rule).
    """
    real = input_ids != pad_id  # [B, T]
    if attention_mask is not None:
        real = real & attention_mask.bool()
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
    return (columns * real).argmax(dim=-1)  # [B]


class RewardModel(nn.Module):
    """`rm(input_ids, attention_mask=None)` -> rewards [B], one scalar per row."""

    def __init__(self, config: GPTConfig, transformer: GPT | None = None) -> None:
        super().__init__()
        self.transformer = transformer if transformer is not None else GPT(config)
        self.score = nn.Linear(config.n_embd, 1, bias=False, device=self.transformer.device,
                               dtype=self.transformer.dtype)

    @property
    def config(self) -> GPTConfig:
        return self.transformer.config

    @classmethod
    def from_lm(cls, lm: GPT, *, seed: int = 0) -> "RewardModel":
        """A reward model on `lm`'s body (weights shared, not copied) with a new head drawn from
        N(0, 1/(n_embd + 1)) (the initialisation of OpenAI's lm-human-preferences), seeded."""
        model = cls(lm.config, lm)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head = torch.randn(1, lm.config.n_embd, generator=gen) / math.sqrt(lm.config.n_embd + 1)
            model.score.weight.copy_(head)
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> "RewardModel":
        """Load a saved reward model (see `minigpt.loading.load_reward_model`)."""
        from .loading import load_reward_model

        return load_reward_model(name_or_path, **kwargs)

    def save_pretrained(self, directory: str | Path, *, tokenizer=None, template=None) -> None:
        """Write the GPT2ForSequenceClassification hub layout atomically (see `minigpt.checkpoint`)."""
        from .checkpoint import save_reward_model

        save_reward_model(self, directory, tokenizer=tokenizer, template=template)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Rewards [B] for `input_ids` [B, T] (right- or left-padded with EOS; mask 1 = real token)."""
        hidden = self.transformer.features(input_ids, attention_mask)  # [B, T, C]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = reward_positions(input_ids, self.config.eos_token_id, attention_mask)  # [B]
        return self.score(hidden[rows, last]).squeeze(-1).float()  # [B]

    @torch.no_grad()
    def shift_rewards_(self, shift: float) -> None:
        """Add `shift` to every reward by moving ln_f's bias along the head's direction w: the reward is
        w . ln_f(x), so bias += shift * w / |w|^2 adds exactly `shift`, in minigpt and in transformers alike."""
        w = self.score.weight[0].float()  # [C]
        norm2 = float(w @ w)
        if norm2 == 0:
            raise ValueError("the reward head is zero: rewards cannot be shifted")
        bias = self.transformer.ln_f.bias
        bias.copy_((bias.float() + shift * w / norm2).to(bias.dtype))
