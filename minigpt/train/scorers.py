"""Where PPO's scores come from: a trained reward model, or a Python function.

Both are called as `scorer(prompts, responses) -> Tensor [B]` with the `Prompt` records and the decoded
response texts (EOS removed). A reward model reads each pair rendered as in its own training: its template's
prompt, the response, EOS (`minigpt.train.data.tokenize_record`). A function `FILE.py:FUNCTION` gets
`(prompts: list[str], responses: list[str])` and returns one finite number per response; anything else (an
exception, a NaN, a wrong count) stops training with one message naming the function.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..reward_model import RewardModel
from ..tokenizer import Tokenizer
from .config import TrainingError
from .data import PromptTemplate, Record, tokenize_record
from .preferences import pad_rows
from .prompts import Prompt


def load_reward_function(spec: str) -> Callable:
    """The function named by "path/to/file.py:function_name" (TrainingError if it cannot be had)."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise TrainingError(f"--reward-fn must be FILE.py:FUNCTION, got {spec!r}")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise TrainingError(f"reward function file not found: {path}")
    module_spec = importlib.util.spec_from_file_location(f"minigpt_reward_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise TrainingError(f"cannot import {path} (a .py file is expected)")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: any error it raises is reported in one line
        raise TrainingError(f"cannot load reward function file {path}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise TrainingError(f"{path} has no function {name!r}")
    return function


class FunctionScorer:
    """Scores from a Python function of (prompt texts, response texts)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.function = load_reward_function(spec)

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> Tensor:
        try:
            scores = self.function([p.text for p in prompts], list(responses))
            scores = [float(s) for s in scores]
        except Exception as exc:  # the user's function: report, never train on a partial batch
            raise TrainingError(f"reward function {self.spec} raised {type(exc).__name__}: {exc}") from None
        if len(scores) != len(responses):
            raise TrainingError(f"reward function {self.spec} returned {len(scores)} scores for "
                                f"{len(responses)} responses")
        for i, score in enumerate(scores):
            if not math.isfinite(score):
                raise TrainingError(f"reward function {self.spec} returned {score} for response {i} "
                                    f"({responses[i][:60]!r}); rewards must be finite numbers")
        return torch.tensor(scores, dtype=torch.float32)


class RewardModelScorer:
    """Scores from a trained `RewardModel` (its own tokenizer and template), frozen."""

    def __init__(self, path: str, device: torch.device, batch_size: int) -> None:
        self.model = RewardModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        self.tokenizer = Tokenizer.for_model(path)
        self.template = PromptTemplate.for_model(path)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[Prompt], responses: list[str]) -> Tensor:
        max_len = self.model.config.n_positions
        rows = []
        for prompt, response in zip(prompts, responses):
            record = Record(prompt.line, prompt.instruction, prompt.input, response or " ")
            example = tokenize_record(record, self.tokenizer, self.template, max_len - 1)
            if example is None:
                raise TrainingError(f"prompt of line {prompt.line} does not fit the reward model's context")
            rows.append(example.ids)
        scores = []
        eos = self.model.config.eos_token_id
        for i in range(0, len(rows), self.batch_size):
            chunk = rows[i: i + self.batch_size]
            ids = pad_rows(chunk, eos).to(self.model.transformer.device)  # [b, T] right-padded
            mask = torch.zeros_like(ids)
            for row, r in enumerate(chunk):
                mask[row, : len(r)] = 1
            scores.append(self.model(ids, mask).float().cpu())
        return torch.cat(scores)


def make_scorer(reward_model: str | None, reward_fn: str | None, *, device: torch.device,
                batch_size: int) -> Callable[[list[Prompt], list[str]], Tensor]:
    if (reward_model is None) == (reward_fn is None):
        raise TrainingError("give exactly one of --reward-model DIR or --reward-fn FILE.py:FUNCTION")
    if reward_fn is not None:
        return FunctionScorer(reward_fn)
    return RewardModelScorer(reward_model, device, batch_size)
