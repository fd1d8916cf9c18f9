"""The settings every trainer shares (`TrainConfig`); each objective's config adds its own fields to it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import MiniGPTError


class TrainingError(MiniGPTError, ValueError):
    """Invalid training settings, or a checkpoint that cannot be resumed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run computes (saved with its checkpoints). Used as is for SFT."""

    data: str  # training JSONL
    out: str  # checkpoint directory (written atomically; --resume reads it)
    model: str = "gpt2"  # hub id, directory or .safetensors file; with random_init a preset name or config.json
    random_init: bool = False  # start from random weights of `model`'s shape instead of loading weights
    tokenizer: str | None = None  # vocab directory; default: the model's own files, else $MINIGPT_TOKENIZER_DIR
    template: str | None = None  # prompt template JSON; default: the start checkpoint's, else PromptTemplate()
    eval_data: str | None = None  # a separate eval JSONL; default: hold out eval_fraction of `data`
    eval_fraction: float = 0.1
    max_len: int | None = None  # tokens per sequence (prompt + response + EOS - 1); default: n_positions
    skip_bad: bool = False  # skip (and report) bad records instead of refusing the file
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8  # records per optimizer step, over all processes
    micro_batch_size: int | None = None  # records per forward pass per process; default: batch_size / world
    lr: float = 5e-5
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # default: 5% of the steps
    weight_decay: float = 0.01  # on the 2-D projection weights only
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_every: int | None = None  # steps; default: about 10 evaluations per run
    save_every: int | None = None  # steps; default: only at the end (and on Ctrl-C)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16
    gradient_checkpointing: bool = False  # recompute each block's activations in backward (memory for compute)
    report_to: tuple[str, ...] = ()  # metrics out: "tensorboard", "wandb", "trackio" (minigpt.train.report)
    report_dir: str | None = None  # where their logs go; default: <out>-logs
    columns: tuple[tuple[str, str], ...] = ()  # (minigpt's field, the data's name for it), e.g. ("prompt", "question")

    def check(self) -> None:
        positive = {"batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size or 1,
                    "max_steps": 1 if self.max_steps is None else self.max_steps,
                    "eval_every": self.eval_every or 1, "save_every": self.save_every or 1}
        for name, value in positive.items():
            if value < 1:
                raise TrainingError(f"{name} must be >= 1, got {value}")
        if not self.epochs > 0:
            raise TrainingError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainingError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainingError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise TrainingError("weight_decay and grad_clip must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TrainingError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        bad = sorted(set(self.report_to) - {"tensorboard", "wandb", "trackio", "none"})
        if bad:
            raise TrainingError(f"report_to {', '.join(bad)}: the choices are tensorboard, wandb, trackio or none")
        for ours, theirs in self.columns:
            if ours not in ("prompt", "response", "chosen", "rejected") or not theirs:
                raise TrainingError(f"columns: cannot map {ours!r} to {theirs!r} (mappable: prompt, response, chosen, "
                                    "rejected)")
        if self.max_len is not None and self.max_len < 2:
            raise TrainingError(f"max_len must be >= 2, got {self.max_len}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        data["betas"] = tuple(data["betas"])
        data["report_to"] = tuple(data.get("report_to", ()))
        data["columns"] = tuple(tuple(pair) for pair in data.get("columns", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainingError(f"saved settings have fields this trainer does not know: {', '.join(unknown)}")
        return cls(**data)
