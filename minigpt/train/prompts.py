"""Prompts for PPO rollouts: one JSON object per line.

`{"prompt": ...}` is the native shape; SFT records (`prompt` + `response`, or Alpaca's `instruction` + `input`)
and preference records (`prompt` + `chosen`/`rejected`/`ranked`, or HH-RLHF's `chosen` + `rejected`) are
accepted too, and only their prompt is used. The prompt template renders each prompt exactly as SFT did, so
the policy sees what it was fine-tuned on.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tokenizer import Tokenizer
from .data import DataError, DataReport, PromptTemplate, read_jsonl
from .preferences import parse_preference, text_field


@dataclass(frozen=True)
class Prompt:
    """One prompt as read, and its rendered tokens."""

    line: int
    instruction: str
    input: str
    ids: tuple[int, ...]  # template.render(instruction, input), tokenized

    @property
    def text(self) -> str:
        """The prompt as a reward function sees it: the instruction, then the input after a blank line."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def parse_prompt(obj: object, line: int) -> tuple[int, str, str]:
    """(line, instruction, input) of one JSON value; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj:
        return line, text_field(obj, "prompt"), ""
    if "instruction" in obj:
        given = obj.get("input", "")
        if not isinstance(given, str):
            raise ValueError(f"field 'input' must be a string, got {type(given).__name__}")
        return line, text_field(obj, "instruction"), given
    if "chosen" in obj:  # HH-RLHF: the prompt is the shared prefix
        return line, parse_preference(obj, line).prompt, ""
    raise ValueError("no prompt: a record needs 'prompt' (or Alpaca's 'instruction', or HH-RLHF's 'chosen' + "
                     "'rejected')")


def load_prompts(path: str, tokenizer: Tokenizer, template: PromptTemplate, max_prompt_len: int, *,
                 skip_bad: bool = False, columns: tuple[tuple[str, str], ...] = ()) -> tuple[list[Prompt], DataReport]:
    """Read, check and tokenize a prompts file; prompts longer than `max_prompt_len` tokens are dropped
    (reported), since the response needs the rest of the context."""
    records, problems = read_jsonl(path, skip_bad=skip_bad, parse=parse_prompt, columns=columns)
    report = DataReport(records=len(records), skipped=problems)
    prompts = []
    for line, instruction, given in records:
        ids = tokenizer.encode(template.render(instruction, given))
        if len(ids) > max_prompt_len:
            report.dropped.append(line)
            continue
        prompts.append(Prompt(line, instruction, given, tuple(ids)))
    if not prompts:
        raise DataError(f"{path}: no prompt fits in {max_prompt_len} tokens (the context minus max_new_tokens)")
    return prompts, report
