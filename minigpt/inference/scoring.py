"""Scoring text: per-token log-probabilities and perplexity, with a sliding window over long inputs.

As in transformers' perplexity guide: windows of `window` tokens start every `stride` tokens; each window
scores only the tokens the previous one did not, so every token after the first is scored exactly once, with
up to `window - stride` tokens of context before the ones it scores. stride == window is the fast,
context-poor end; a smaller stride gives each token more context and costs more windows. One difference
from the guide: stride == window is run as window - 1, because non-overlapping windows leave the first token
of each window without context, and the guide's recipe then silently skips it; here no token is skipped.

Labelled rows (`Example`: prompt ids whose loss is ignored, then response ids) and their right-padded `Batch`
live here, since scoring a response is their first use; training reuses them (`minigpt.train.data`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import Transformer

IGNORE_INDEX = -100  # label of a position that does not count in the loss


# --------------------------------------------------------------------------- labelled rows and batches


@dataclass(frozen=True)
class Example:
    """One tokenized demonstration: `ids` = prompt + response (+ EOS); the loss covers ids[prompt_len:]."""

    line: int
    ids: list[int]
    prompt_len: int
    truncated: bool = False  # the response was cut to fit the context (and lost its EOS)

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * self.prompt_len + self.ids[self.prompt_len:]


@dataclass
class Batch:
    """Right-padded inputs and shifted targets of a few examples."""

    input_ids: Tensor  # [B, T] long; padding is EOS
    targets: Tensor  # [B, T] long; IGNORE_INDEX where the position does not count

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.targets.to(device))


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Inputs ids[:-1] and targets labels[1:] of each example, right-padded to the longest row."""
    width = max(len(e.ids) - 1 for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.ids) - 1
        input_ids[row, :n] = torch.tensor(example.ids[:-1])
        targets[row, :n] = torch.tensor(example.labels[1:])
    return Batch(input_ids, targets)


# --------------------------------------------------------------------------- scores


@dataclass
class Score:
    """Log-probabilities of the scored tokens; perplexity = exp(-mean log-probability)."""

    token_ids: list[int]  # the scored tokens (all but the first of the text)
    logprobs: Tensor  # [N] float64, natural log

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def mean_nll(self) -> float:
        return float(-self.logprobs.mean()) if self.num_tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `length` tokens.

    Every position 1..length-1 is scored by exactly one window, with at least one token of context in it.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    stride = min(stride, window - 1)  # windows overlap by >= 1 token: each window's scored tokens have context
    spans, previous_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + window, length)
        first = max(previous_end, begin + 1)  # the window's first token has no context inside it
        if first < end:
            spans.append((begin, end, first))
        previous_end = end
        if end == length:
            break
    return spans


@torch.no_grad()
def score_ids(
    model: Transformer,
    ids: Sequence[int],
    *,
    window: int | None = None,
    stride: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> Score:
    """Score every token of `ids` after the first. window defaults to the model's context, stride to half it."""
    window = window or model.config.n_positions
    if window > model.config.n_positions:
        raise ValueError(f"window {window} exceeds the model's {model.config.n_positions} positions")
    stride = stride or max(1, window // 2)
    ids_tensor = torch.tensor(list(ids), dtype=torch.long, device=model.device)
    spans = windows(len(ids_tensor), window, stride)
    pieces: list[Tensor] = []
    for i, (begin, end, first) in enumerate(spans):
        logits = model(ids_tensor[None, begin:end])[0]  # [W, V]
        predicted = logits[first - begin - 1: end - begin - 1].float().log_softmax(-1)  # [n, V] for first..end-1
        targets = ids_tensor[first:end]  # [n]
        pieces.append(predicted.gather(1, targets[:, None])[:, 0].double())
        if on_window is not None:
            on_window(i + 1, len(spans))
    logprobs = torch.cat(pieces).cpu() if pieces else torch.zeros(0, dtype=torch.float64)
    return Score(list(ids)[1:], logprobs)


@torch.no_grad()
def score_examples(model: Transformer, examples: list[Example], *, batch_size: int = 8) -> Score:
    """Log-probabilities of each example's response tokens (+ EOS) given its prompt, in order."""
    token_ids: list[int] = []
    pieces: list[Tensor] = []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i: i + batch_size], model.config.eos_token_id).to(model.device)
        logprobs = model(batch.input_ids).float().log_softmax(-1)  # [B, T, V]
        keep = batch.targets != IGNORE_INDEX  # [B, T]
        targets = batch.targets[keep]
        pieces.append(logprobs[keep].gather(1, targets[:, None])[:, 0].double().cpu())
        token_ids += targets.tolist()
    return Score(token_ids, torch.cat(pieces))
