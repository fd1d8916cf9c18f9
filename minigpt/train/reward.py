"""Reward model training (InstructGPT step 2): learn r(x, y) from people's comparisons.

Loss of a record with responses ranked y_1 > ... > y_K (a chosen/rejected pair is K = 2, with an optional
margin m): the mean over its C(K,2) pairs (i better than j) of -log sigmoid(r(x, y_i) - r(x, y_j) - m)
+ c (r(x, y_i) + r(x, y_j))^2 with c = `center_rewards` (TRL's center_rewards_coefficient: it pulls each pair's
mean reward to 0 and never pushes on the margin r_i - r_j). A step's loss is
the mean over the records of the global batch. Only reward differences count, so adding a constant to every
reward changes nothing (and `--normalize-on` may shift them afterwards: InstructGPT's demonstrations-mean-0).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..loading import has_tensor, resolve_checkpoint
from ..model import Transformer
from ..reward_model import RewardModel, load_reward_model
from .config import TrainConfig, TrainingError
from .data import Example, PromptTemplate, load_examples
from .objective import Objective, load_start_model
from .preferences import (
    PreferenceBatch,
    PreferenceExample,
    collate_preferences,
    load_preferences,
    pad_rows,
    per_record_mean,
)
from .run import Run, TrainResult, run_training

NORMALIZATION_FILE = "reward_normalization.json"


@dataclass(frozen=True)
class RewardConfig(TrainConfig):
    """TrainConfig plus the reward model's own settings (defaults: one epoch, as InstructGPT: more overfits)."""

    epochs: float = 1.0
    lr: float = 1e-5
    center_rewards: float = 0.0  # c in c * (r_better + r_worse)^2 per pair
    normalize_on: str | None = None  # demonstrations JSONL: shift rewards so they score mean 0 there

    def check(self) -> None:
        super().check()
        if self.center_rewards < 0:
            raise TrainingError(f"center_rewards must be >= 0, got {self.center_rewards}")


def ranking_loss(rewards: Tensor, batch: PreferenceBatch, center_rewards: float = 0.0) -> Tensor:
    """Per-record loss [N]: mean over the record's pairs of -log sigmoid(r_better - r_worse - margin)
    + center_rewards * (r_better + r_worse)^2."""
    margins = batch.margins.to(rewards.dtype)[batch.pair_record]  # [P]
    better, worse = rewards[batch.better], rewards[batch.worse]  # [P], [P]
    pair_losses = -F.logsigmoid(better - worse - margins)  # [P]
    if center_rewards:
        pair_losses = pair_losses + center_rewards * (better + worse) ** 2
    return per_record_mean(pair_losses, batch.pair_record, batch.num_records)  # [N]


class RewardLoss(nn.Module):
    """Summed per-record ranking loss of a micro-batch (the run divides by the global record count)."""

    def __init__(self, model: RewardModel, center_rewards: float) -> None:
        super().__init__()
        self.model = model
        self.center_rewards = center_rewards

    def forward(self, **batch: Tensor) -> Tensor:
        batch = PreferenceBatch(**batch)
        rewards = self.model(batch.reward_ids)  # [R]
        return ranking_loss(rewards, batch, self.center_rewards).sum()


@torch.no_grad()
def score_preferences(model: RewardModel, examples: list[PreferenceExample], *, batch_size: int = 8,
                      device: torch.device | None = None, autocast: torch.autocast | None = None,
                      center_rewards: float = 0.0) -> tuple[dict[str, float], list[list[float]]]:
    """Metrics (loss, accuracy = share of pairs ranked right, mean margin r_better - r_worse, mean reward) and
    each record's rewards (best first) over `examples`."""
    device = device or model.transformer.device
    losses, right, margins, pairs, all_rewards = 0.0, 0, 0.0, 0, []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i: i + batch_size]
        batch = collate_preferences(chunk, model.config.eos_token_id).to(device)
        with autocast or nullcontext():
            rewards = model(batch.reward_ids).float()
        losses += float(ranking_loss(rewards, batch, center_rewards).sum())
        gaps = rewards[batch.better] - rewards[batch.worse]
        right += int((gaps > 0).sum())
        margins += float(gaps.sum())
        pairs += gaps.numel()
        values = rewards.tolist()
        for example in chunk:
            all_rewards.append(values[: len(example.responses)])
            values = values[len(example.responses):]
    flat = [r for rs in all_rewards for r in rs]
    metrics = {"loss": losses / len(examples), "accuracy": right / pairs, "margin": margins / pairs,
               "mean_reward": sum(flat) / len(flat)}
    return metrics, all_rewards


def load_demonstrations(path: str, tokenizer, template: PromptTemplate, max_len: int) -> list[Example]:
    """The demonstrations of an SFT file as reward-model rows (prompt rendered with the template, response + EOS),
    at most `max_len` tokens each, as training's rows; a bad line raises DataError naming FILE:LINE."""
    examples, _ = load_examples(path, tokenizer, template, max_len - 1)
    return examples


@torch.no_grad()
def demonstration_rewards(model: RewardModel, examples: list[Example], *, batch_size: int = 8) -> list[float]:
    """Rewards of tokenized demonstrations (`load_demonstrations`)."""
    pad = model.config.eos_token_id
    rewards: list[float] = []
    for i in range(0, len(examples), batch_size):
        ids = pad_rows([e.ids for e in examples[i: i + batch_size]], pad)
        rewards += model(ids.to(model.transformer.device)).tolist()
    return rewards


def normalize_rewards_(model: RewardModel, examples: list[Example], path: str) -> dict[str, float | str]:
    """Shift the model's rewards so the demonstrations (read from `path`) score mean 0 (folded into ln_f's bias)."""
    before = demonstration_rewards(model, examples)
    mean = sum(before) / len(before)
    model.shift_rewards_(-mean)
    after = demonstration_rewards(model, examples)
    return {"demonstrations": str(path), "count": len(before), "mean_before": mean, "shift": -mean,
            "mean_after": sum(after) / len(after)}


class Reward(Objective):
    """Preference records -> a RewardModel (GPT2ForSequenceClassification layout)."""

    name = "reward"
    config_class = RewardConfig

    def __init__(self, config: RewardConfig) -> None:
        super().__init__(config)
        self.normalization: dict | None = None
        self.demonstrations: list[Example] = []

    def prepare(self, run: Run) -> None:
        """A finished run resumed as it is keeps its saved normalisation; a run that will normalise reads and
        checks its demonstrations now, so a bad line fails before training, never after the last step."""
        saved = run.out / NORMALIZATION_FILE
        if run.finished_before and run.step >= run.total_steps and saved.is_file():
            self.normalization = json.loads(saved.read_text(encoding="utf-8"))
        elif self.config.normalize_on:
            self.demonstrations = load_demonstrations(self.config.normalize_on, run.tokenizer, run.template,
                                                      run.max_len)

    def load_data(self, path, tokenizer, template, max_len):
        # A reward model reads the whole row (no shifted targets), so rows hold at most max_len tokens.
        return load_preferences(path, tokenizer, template, max_len - 1, skip_bad=self.config.skip_bad,
                                columns=self.config.columns)

    def collate(self, items, pad_id):
        return collate_preferences(items, pad_id)

    def tokens(self, item: PreferenceExample) -> int:
        return sum(len(e.ids) for e in item.responses)

    def load_model(self, source, *, resumed, model_config):
        if resumed or (not self.config.random_init and has_tensor(resolve_checkpoint(source), "score.weight")):
            return load_reward_model(source)
        return RewardModel.from_lm(load_start_model(self.config, model_config), seed=self.config.seed)

    def lm(self, model: RewardModel) -> Transformer:
        return model.transformer

    def loss_module(self, model):
        return RewardLoss(model, self.config.center_rewards)

    def evaluate(self, model, items, *, batch_size, device, autocast):
        metrics, _ = score_preferences(model, items, batch_size=batch_size, device=device, autocast=autocast,
                                       center_rewards=self.config.center_rewards)
        return metrics

    def progress_fields(self, metrics):
        return {"eval": f"{metrics['loss']:.4f}", "acc": f"{metrics['accuracy']:.3f}"}

    def finish(self, run: Run) -> None:
        if self.config.normalize_on and self.normalization is None:
            self.normalization = normalize_rewards_(run.model, self.demonstrations, self.config.normalize_on)
            run.log(f"normalised on {self.config.normalize_on}: demonstrations' mean reward "
                    f"{self.normalization['mean_before']:.4f} -> {self.normalization['mean_after']:.2e}")

    def save_model(self, model, directory, *, tokenizer, template, extra):
        from ..checkpoint import save_reward_model

        def files(tmp: Path) -> None:
            extra(tmp)
            if self.normalization is not None:
                (tmp / NORMALIZATION_FILE).write_text(json.dumps(self.normalization, indent=2) + "\n",
                                                      encoding="utf-8")

        save_reward_model(model, directory, tokenizer=tokenizer, template=template, extra=files)


def train_reward_model(config: RewardConfig, *, resume: bool = False, overrides: dict | None = None,
                       progress: bool = True, log: Callable[[str], None] | None = None,
                       should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train a reward model on preference records (or, with `resume`, continue the run saved in `config.out`)."""
    return run_training(Reward, config, resume=resume, overrides=overrides, progress=progress, log=log,
                        should_stop=should_stop)
