"""Instruction data for supervised fine-tuning: JSONL records, the prompt template, masked labels, batches.

A record is `{"prompt": ..., "response": ...}` or Alpaca's `{"instruction": ..., "input": ..., "output": ...}`
("input" optional). The template turns it into one token sequence

    prompt tokens (template applied)  |  response tokens  |  <|endoftext|>
    labels: -100 (ignored)            |  the tokens       |  EOS

so the loss is taken on the response and its EOS only. Each example is one batch row, right-padded: causal
attention means a real token never sees the padding after it, so no attention crosses between examples and
positions start at 0 in every row, exactly as when the example is alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError
from ..inference.scoring import IGNORE_INDEX, Batch, Example, collate
from ..template import TEMPLATE_FILE, PromptTemplate
from ..tokenizer import Tokenizer

__all__ = [  # the template, examples and batches are defined below this layer and re-exported here
    "IGNORE_INDEX", "TEMPLATE_FILE", "Batch", "DataError", "DataReport", "Example", "PromptTemplate", "Record",
    "collate", "demonstration", "load_examples", "parse_record", "read_jsonl", "split_eval", "tokenize_record",
    "tokenize_records",
]

# --------------------------------------------------------------------------- reading records


@dataclass(frozen=True)
class Record:
    """One demonstration as read from the file."""

    line: int  # 1-based line number in the file
    instruction: str
    input: str
    response: str


def parse_record(obj: object) -> tuple[str, str, str]:
    """(instruction, input, response) from one JSON value; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj or "response" in obj:
        fields, names = ("prompt", None, "response"), "'prompt' and 'response'"
    else:
        fields, names = ("instruction", "input", "output"), "'instruction' and 'output' (and optional 'input')"
    instruction_key, input_key, response_key = fields
    missing = [k for k in (instruction_key, response_key) if k not in obj]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(m) for m in missing)}; a record needs {names}")
    values = {k: obj.get(k, "") if k else "" for k in fields}
    for key, value in values.items():
        if key and not isinstance(value, str):
            raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not values[instruction_key].strip():
        raise ValueError(f"empty {instruction_key!r}")
    if not values[response_key].strip():
        raise ValueError(f"empty {response_key!r}")
    return values[instruction_key], values[input_key] if input_key else "", values[response_key]


def demonstration(obj: object, line: int) -> Record:
    return Record(line, *parse_record(obj))


def read_jsonl(path: str | Path, *, skip_bad: bool = False,
               parse: Callable[[object, int], Any] = demonstration) -> tuple[list[Any], list[str]]:
    """Records of a JSONL file and a list of problems, each "FILE:LINE: what".

    `parse(json_value, line)` makes one record or raises ValueError saying what is wrong (default: an
    instruction record). A bad line (invalid JSON, or refused by `parse`: not an object, missing or non-string
    fields, empty instruction or response, ...) is rejected with every problem listed (DataError), or skipped
    and reported when `skip_bad`. Blank lines are ignored. Nothing is trained before the whole file is checked.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from None
    records: list[Record] = []
    problems: list[str] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        try:
            records.append(parse(obj, number))
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    if problems and not skip_bad:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"{len(problems)} bad record(s): {shown} (fix them, or pass --skip-bad to skip them)")
    if not records:
        raise DataError(f"{path}: no usable records")
    return records, problems


# --------------------------------------------------------------------------- tokenizing


@dataclass
class DataReport:
    """What happened to the file's records on their way to examples."""

    records: int = 0
    skipped: list[str] = field(default_factory=list)  # bad lines, "FILE:LINE: why"
    truncated: list[int] = field(default_factory=list)  # line numbers whose response was cut to fit
    dropped: list[int] = field(default_factory=list)  # line numbers whose prompt alone does not fit

    def summary(self) -> str:
        parts = [f"{self.records - len(self.dropped)} examples from {self.records} records"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad line(s) skipped")
        if self.truncated:
            parts.append(f"{len(self.truncated)} truncated to the context (response cut, no EOS)")
        if self.dropped:
            parts.append(f"{len(self.dropped)} dropped (prompt alone fills the context)")
        return ", ".join(parts)


def tokenize_record(record: Record, tokenizer: Tokenizer, template: PromptTemplate, max_len: int) -> Example | None:
    """The example of one record, its response cut to fit `max_len` tokens; None if the prompt alone does not
    leave room for one response token. The sequence is max_len + 1 long at most: inputs and targets are
    its two shifted views of max_len each."""
    prompt_ids = tokenizer.encode(template.render(record.instruction, record.input))
    response_ids = tokenizer.encode(record.response) + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_len:
        return None
    ids = prompt_ids + response_ids
    return Example(record.line, ids[: max_len + 1], len(prompt_ids), truncated=len(ids) > max_len + 1)


def tokenize_records(
    records: list[Record], tokenizer: Tokenizer, template: PromptTemplate, max_len: int, report: DataReport
) -> list[Example]:
    examples = []
    for record in records:
        example = tokenize_record(record, tokenizer, template, max_len)
        if example is None:
            report.dropped.append(record.line)
            continue
        if example.truncated:
            report.truncated.append(record.line)
        examples.append(example)
    return examples


def load_examples(
    path: str | Path, tokenizer: Tokenizer, template: PromptTemplate, max_len: int, *, skip_bad: bool = False
) -> tuple[list[Example], DataReport]:
    """Read, check and tokenize an instruction file; the report counts skipped, truncated and dropped records."""
    records, problems = read_jsonl(path, skip_bad=skip_bad)
    report = DataReport(records=len(records), skipped=problems)
    examples = tokenize_records(records, tokenizer, template, max_len, report)
    if not examples:
        raise DataError(f"{path}: no example fits the {max_len}-token context")
    return examples, report


def split_eval(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, eval): a seeded random `fraction` of the examples held out (at least one when fraction > 0)."""
    if not 0 <= fraction < 1:
        raise DataError(f"eval fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return examples, []
    n_eval = max(1, math.floor(len(examples) * fraction))
    if n_eval >= len(examples):
        raise DataError(f"{len(examples)} examples are too few to hold out {fraction:.0%} for evaluation")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
