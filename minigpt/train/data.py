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

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError
from ..extras import MissingExtra
from ..hub import hub_reachable
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


COLUMNS = ("prompt", "response", "chosen", "rejected")  # the fields --prompt-field etc. may rename
ROLES = ("system", "user", "assistant")


def rename_columns(row: object, columns: tuple[tuple[str, str], ...]) -> object:
    """The row with each (minigpt's name, the data's name) column renamed to minigpt's; unmapped fields stay."""
    if not columns or not isinstance(row, dict):
        return row
    row = dict(row)
    for ours, theirs in columns:
        if theirs not in row:
            raise ValueError(f"no field {theirs!r} (given as the {ours} field); the row has "
                             f"{', '.join(map(repr, row)) or 'no fields'}")
        if ours != theirs:
            row[ours] = row.pop(theirs)
    return row


def is_conversation(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def check_messages(messages: list, name: str) -> list[tuple[str, str]]:
    out = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{name}[{i}]: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"{name}[{i}]: 'content' must be a string, got {type(content).__name__}")
        out.append((role, content))
    return out


def conversation_prompt(messages: list[tuple[str, str]], name: str) -> str:
    """The instruction text of the turns before a response: the last user message, with any earlier turns
    (system included) written before it as "Role: content" lines."""
    if not messages or messages[-1][0] != "user":
        raise ValueError(f"{name}: the turns before a response must end with a user message")
    *earlier, (_, last) = messages
    if not earlier:
        return last
    return "\n".join(f"{role.capitalize()}: {content}" for role, content in earlier) + f"\nUser: {last}"


def assistant_reply(messages: list[tuple[str, str]], name: str) -> tuple[list[tuple[str, str]], str]:
    """(the turns before it, the content of the final assistant message)."""
    if not messages or messages[-1][0] != "assistant":
        raise ValueError(f"{name}: a response must be a final assistant message")
    return messages[:-1], messages[-1][1]


def from_conversation(row: dict) -> dict:
    """TRL's conversational shape as minigpt's strings: {"messages": [...]} -> prompt + response;
    {"prompt": [...], "chosen": [...], "rejected": [...]} (or the prompt inside chosen/rejected) -> strings;
    {"prompt": [...]} -> a prompt. Multi-turn history goes into the prompt as "Role: content" lines."""
    row = dict(row)
    if is_conversation(row.get("messages")):
        messages = check_messages(row.pop("messages"), "messages")
        if messages and messages[-1][0] == "assistant":
            before, row["response"] = assistant_reply(messages, "messages")
        else:
            before = messages
        row["prompt"] = conversation_prompt(before, "messages")
        return row
    prompt = check_messages(row["prompt"], "prompt") if is_conversation(row.get("prompt")) else None
    for key in ("chosen", "rejected", "response"):
        if is_conversation(row.get(key)):
            before, row[key] = assistant_reply(check_messages(row[key], key), key)
            if before:  # implicit prompt: the turns before the reply
                if prompt is not None and before != prompt:
                    raise ValueError(f"{key!r} starts with turns that differ from 'prompt'")
                prompt = before
    if prompt is not None:
        row["prompt"] = conversation_prompt(prompt, "prompt")
    return row


def normalize_row(row: object, columns: tuple[tuple[str, str], ...] = ()) -> object:
    """A row in minigpt's shape: columns renamed (`columns`), conversations turned into strings."""
    row = rename_columns(row, columns)
    if isinstance(row, dict) and any(is_conversation(v) for v in row.values()):
        row = from_conversation(row)
    return row


def read_jsonl(path: str | Path, *, skip_bad: bool = False,
               parse: Callable[[object, int], Any] = demonstration,
               columns: tuple[tuple[str, str], ...] = ()) -> tuple[list[Any], list[str]]:
    """Records of a data source and a list of problems, each "WHERE: what" (WHERE = FILE:LINE, FILE:ROW or
    DATASET[SPLIT]:ROW). Sources: `read_rows`.

    `parse(row, number)` makes one record or raises ValueError saying what is wrong (default: an instruction
    record), after `normalize_row` (renamed `columns`, TRL's conversational messages as strings). A bad row (invalid JSON, or refused by `parse`: not an object, missing or non-string fields, empty
    instruction or response, ...) is rejected with every problem listed (DataError), or skipped and reported
    when `skip_bad`. Blank JSONL lines are ignored. Nothing is trained before the whole source is checked.
    """
    records: list[Any] = []
    problems: list[str] = []
    for where, number, row in read_rows(path):
        try:
            if isinstance(row, ValueError):
                raise row
            records.append(parse(normalize_row(row, columns), number))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if problems and not skip_bad:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"{len(problems)} bad record(s): {shown} (fix them, or pass --skip-bad to skip them)")
    if not records:
        raise DataError(f"{path}: no usable records")
    return records, problems


def read_rows(source: str | Path) -> Iterator[tuple[str, int, object]]:
    """(where, number, row) for each row of a data source; a row that cannot be read is a ValueError.

    JSONL (one JSON value per line; the default), a `.json` file holding one array, `.csv` with a header row
    (each row a dict of strings; an empty cell is an absent field), and through the optional `datasets` package (`pip install "minigpt[data]"`)
    `.parquet`, a directory written by `Dataset.save_to_disk`, or a hub dataset id `ID[@REVISION][:SUBSET]:SPLIT`
    or `ID` (split `train` by default; offline, from the datasets cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _dataset_rows(str(source), lambda datasets: _from_disk(datasets, path))
        return
    if not path.is_file():
        if _looks_like_dataset_id(str(source)):
            name, revision, subset, split = parse_dataset_id(str(source))
            yield from _dataset_rows(f"{str(source).partition(':')[0]}[{split}]", lambda datasets: datasets.load_dataset(
                name, subset, split=split, revision=revision))
            return
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _dataset_rows(str(path), lambda datasets: datasets.load_dataset(
            "parquet", data_files=str(path), split="train"))
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from None
    if suffix == ".csv":
        for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):  # line 1 is the header
            yield f"{path}:{number}", number, {k: v for k, v in row.items() if v not in ("", None)}  # empty: absent
    elif suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        for number, row in enumerate(rows, start=1):
            yield f"{path}[{number - 1}]", number, row
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{path}:{number}", number, ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")


def _looks_like_dataset_id(text: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?(:[\w.-]+){0,2}", text)) \
        and not text.endswith((".jsonl", ".json", ".csv"))


def parse_dataset_id(text: str) -> tuple[str, str | None, str | None, str]:
    """`ORG/NAME[@REVISION][:SUBSET]:SPLIT` (or `ORG/NAME[@REVISION]`, split train) -> (id, revision, subset,
    split): `Anthropic/hh-rlhf:test`, `HuggingFaceH4/ultrafeedback_binarized:train_prefs`,
    `allenai/tulu-3-sft-mixture@main:train`, `nyu-mll/glue:mrpc:validation`."""
    head, *rest = text.split(":")
    name, _, revision = head.partition("@")
    subset, split = (None, rest[0]) if len(rest) == 1 else (rest[0], rest[1]) if rest else (None, "train")
    return name, revision or None, subset, split


def _from_disk(datasets, path: Path):
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (it has {', '.join(loaded)})")
        return loaded["train"]
    return loaded


def _dataset_rows(name: str, load: Callable[[Any], Any]) -> Iterator[tuple[str, int, object]]:
    try:
        import datasets
    except ImportError:
        raise MissingExtra(f"{name}: reading Parquet, saved datasets and hub datasets needs the datasets package: "
                           "pip install \"minigpt[data]\"") from None
    datasets.disable_progress_bars()
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = offline or not hub_reachable()  # unreachable hub: the cache only, at once
    try:
        rows = load(datasets)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types: offline, unknown id, unreadable file
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot load dataset {name}: {why}") from None
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
    for number, row in enumerate(rows, start=1):
        yield f"{name}:{number}", number, row


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
    path: str | Path, tokenizer: Tokenizer, template: PromptTemplate, max_len: int, *, skip_bad: bool = False,
    columns: tuple[tuple[str, str], ...] = (),
) -> tuple[list[Example], DataReport]:
    """Read, check and tokenize an instruction file; the report counts skipped, truncated and dropped records."""
    records, problems = read_jsonl(path, skip_bad=skip_bad, columns=columns)
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
