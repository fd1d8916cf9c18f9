"""Language modelling on raw text (nanoGPT's job): pretraining from random weights or continued pretraining.

The corpus is tokenized once into a memory-mapped uint16 token file (`minigpt.train.corpus`). A step reads
`batch_size` windows of `block_size + 1` tokens: at random offsets drawn from a generator seeded by the step
(so a resumed run draws the same), or, with `sequential`, the aligned windows in order. The loss is the mean
next-token cross entropy over every position (SFT's `ResponseLoss` with every target counting); evaluation
is the cross entropy and perplexity of held-out tokens (`eval_text`, or the corpus's last `eval_fraction`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import TrainConfig, TrainingError
from .corpus import CorpusReport, TokenWindows, content_digest, corpus_files, shared_token_file
from .data import Batch
from .objective import Objective
from .run import Run, TrainResult, run_training
from .sft import ResponseLoss


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """TrainConfig plus raw-text settings; `data` (and `eval_data`) are corpora: a file, directory or glob.
    Defaults follow nanoGPT's GPT-2 run: lr 6e-4, betas (0.9, 0.95), weight decay 0.1, one pass."""

    epochs: float = 1.0  # passes over the training tokens
    lr: float = 6e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eval_fraction: float = 0.05  # the corpus's last 5% is held out when no eval_data is given
    block_size: int | None = None  # tokens per window; default: the model's context (max_len if given)
    sequential: bool = False  # walk the corpus in order instead of random windows
    doc_separator: str | None = None  # splits a file into documents (each ends with <|endoftext|>)
    cache_dir: str | None = None  # where token files go; default: .minigpt_tokens/ beside the corpus
    eval_windows: int = 64  # evaluate on at most this many windows, evenly spaced over the held-out tokens

    def check(self) -> None:
        super().check()
        if self.block_size is not None and self.block_size < 1:
            raise TrainingError(f"block_size must be >= 1, got {self.block_size}")
        if self.eval_windows < 1:
            raise TrainingError(f"eval_windows must be >= 1, got {self.eval_windows}")
        if self.doc_separator == "":
            raise TrainingError("doc_separator must not be empty")


def collate_windows(windows: list[Tensor]) -> Batch:
    """Inputs [B, block] and targets [B, block] (the same tokens shifted by one) from windows [block + 1]."""
    stacked = torch.stack(windows)  # [B, block + 1]
    return Batch(stacked[:, :-1].contiguous(), stacked[:, 1:].contiguous())


class LM(Objective):
    """Raw text -> next-token cross entropy on every position."""

    name = "lm"
    config_class = PretrainConfig

    def __init__(self, config: PretrainConfig) -> None:
        super().__init__(config)
        self.digests: dict[str, str] = {}

    # ----- data

    def data_digest(self, path: str) -> str:
        if path not in self.digests:
            self.digests[path] = content_digest(corpus_files(path))
        return self.digests[path]

    def load_data(self, path, tokenizer, template, max_len):
        block = self.config.block_size or max_len
        if block > max_len:
            raise TrainingError(f"block_size {block} exceeds the model's context of {max_len} tokens")
        token_file = shared_token_file(path, tokenizer, separator=self.config.doc_separator,
                                       cache_dir=self.config.cache_dir, digest=self.data_digest(path),
                                       progress=self.show_progress)
        windows = TokenWindows(token_file.tokens(), block)
        if windows.num_tokens < block + 1:
            raise TrainingError(f"{path} holds {windows.num_tokens:,} tokens: fewer than one window of "
                                f"{block + 1}; lower --block-size or add text")
        report = CorpusReport(records=token_file.num_documents, tokens=token_file.num_tokens,
                              documents=token_file.num_documents, files=token_file.num_files,
                              token_file=str(token_file.path), reused=token_file.reused)
        return windows, report

    def split_eval(self, items: TokenWindows, fraction: float, seed: int):
        if fraction == 0:
            return items, []
        return items.split_tail(fraction)

    def batch_indices(self, run: Run, step: int) -> list[int]:
        """Token offsets of the step's windows: seeded by the step (random) or the next aligned ones (sequential)."""
        data: TokenWindows = run.train_set
        size = self.config.batch_size
        if self.config.sequential:
            return [data.start + (i % len(data)) * data.block for i in range(step * size, (step + 1) * size)]
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return torch.randint(data.start, data.max_offset + 1, (size,), generator=generator).tolist()

    def item(self, data: TokenWindows, index: int) -> Tensor:
        return data.at(index)

    def collate(self, items, pad_id):
        return collate_windows(items)

    def weight(self, item: Tensor) -> int:
        return item.numel() - 1  # every position is a target

    def tokens(self, item: Tensor) -> int:
        return item.numel() - 1

    # ----- model and evaluation

    def loss_module(self, model):
        return ResponseLoss(model)

    @torch.no_grad()
    def evaluate(self, model, items: TokenWindows, *, batch_size, device, autocast):
        """Mean cross entropy per token and perplexity over at most `eval_windows` evenly spaced windows."""
        count = min(len(items), self.config.eval_windows)
        picks = [round(i * (len(items) - 1) / max(1, count - 1)) for i in range(count)] if count > 1 else [0]
        loss_fn = ResponseLoss(model)
        total, tokens = 0.0, 0
        for i in range(0, len(picks), batch_size):
            batch = collate_windows([items[j] for j in picks[i: i + batch_size]]).to(device)
            with autocast or nullcontext():
                total += float(loss_fn(batch.input_ids, batch.targets))
            tokens += batch.targets.numel()
        loss = total / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def progress_fields(self, metrics):
        return {"eval": f"{metrics['loss']:.4f}", "ppl": f"{metrics['perplexity']:.4g}"}


def train_lm(config: PretrainConfig, *, resume: bool = False, overrides: dict | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None,
             should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Train on raw text (or, with `resume`, continue the run saved in `config.out`)."""
    return run_training(LM, config, resume=resume, overrides=overrides, progress=progress, log=log,
                        should_stop=should_stop)
