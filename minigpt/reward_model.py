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

from .checkpoint import save_reward_model
from .config import GPTConfig
from .errors import CheckpointError
from .loading import SCORE_KEY, has_tensor, read_state_dict, resolve_checkpoint
from .model import Transformer


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

    def __init__(self, config: GPTConfig, transformer: Transformer | None = None) -> None:
        super().__init__()
        self.transformer = transformer if transformer is not None else Transformer(config)
        self.score = nn.Linear(config.n_embd, 1, bias=False, device=self.transformer.device,
                               dtype=self.transformer.dtype)

    @property
    def config(self) -> GPTConfig:
        return self.transformer.config

    @classmethod
    def from_lm(cls, lm: Transformer, *, seed: int = 0) -> "RewardModel":
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
        """Load a saved reward model (see `load_reward_model`)."""
        return load_reward_model(name_or_path, **kwargs)

    def save_pretrained(self, directory: str | Path, *, tokenizer=None, template=None) -> None:
        """Write the GPT2ForSequenceClassification hub layout atomically (see `minigpt.checkpoint`)."""
        save_reward_model(self, directory, tokenizer=tokenizer, template=template)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Rewards [B] for `input_ids` [B, T] (right- or left-padded with EOS; mask 1 = real token)."""
        hidden = self.transformer.features(input_ids, attention_mask)  # [B, T, C]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = reward_positions(input_ids, self.config.eos_token_id, attention_mask)  # [B]
        return self.score(hidden[rows, last]).squeeze(-1).float()  # [B]

    @torch.no_grad()
    def score_texts(self, tokenizer, prompts: list[str], responses: list[str], *, batch_size: int = 32) -> Tensor:
        """Rewards [B] of (prompt, response) text pairs, each row tokenized as in reward-model training: the
        prompt text as given (already rendered with the template), the response, then EOS."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        eos = self.config.eos_token_id
        rows = [tokenizer.encode(p) + tokenizer.encode(r) + [eos] for p, r in zip(prompts, responses)]
        too_long = [i for i, row in enumerate(rows) if len(row) > self.config.n_positions]
        if too_long:
            raise ValueError(f"pair {too_long[0]} is {len(rows[too_long[0]])} tokens, over the reward model's "
                             f"{self.config.n_positions} positions")
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i: i + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), eos, dtype=torch.long)  # [b, T] right-padded
            mask = torch.zeros_like(ids)
            for row, r in enumerate(chunk):
                ids[row, : len(r)] = torch.tensor(r)
                mask[row, : len(r)] = 1
            device = self.transformer.device
            out.append(self(ids.to(device), mask.to(device)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

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


def load_reward_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> RewardModel:
    """Load a reward model saved as transformers' GPT2ForSequenceClassification (`transformer.*` + `score.weight`
    [1, n_embd]); a checkpoint without `score.weight` is refused (start one with `RewardModel.from_lm`)."""
    files = resolve_checkpoint(name_or_path, revision=revision)
    if not has_tensor(files, SCORE_KEY):
        raise CheckpointError(f"{name_or_path}: no {SCORE_KEY}, so not a reward model (a language model? train a "
                              "reward model from it with minigpt-reward)")
    with torch.device("meta"):
        model = RewardModel(files.config)
    expected = {name: tuple(t.shape) for name, t in model.transformer.state_dict().items()}
    expected[SCORE_KEY] = (1, files.config.n_embd)
    state = read_state_dict(files.weights, expected, dtype=dtype or torch.float32,
                            device=torch.device(device) if device is not None else torch.device("cpu"))
    state = {(k if k == SCORE_KEY else f"transformer.{k}"): v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
