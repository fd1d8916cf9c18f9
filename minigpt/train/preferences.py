"""Preference data (comparisons of responses to one prompt) for the reward model and DPO.

One JSON object per line, three shapes:

- `{"prompt": ..., "chosen": ..., "rejected": ...}` (TRL's explicit format), optional `"margin": number`;
- `{"prompt": ..., "ranked": [best, ..., worst]}` (InstructGPT's K-wise ranking, K >= 2): all C(K,2) pairs of
  one prompt form one record, and each response runs once;
- `{"chosen": ..., "rejected": ...}` (Anthropic HH-RLHF): the prompt is the common prefix up to its last
  "\\n\\nAssistant:"; a record without such a shared prefix is a bad line.

The prompt is rendered with the prompt template and each response tokenized separately with EOS appended,
exactly as SFT does (`minigpt.train.data.tokenize_record`), so one record is K SFT-style examples sharing a prompt.
A batch puts every response of every record in a row of its own, best first within a record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..tokenizer import Tokenizer
from .data import DataError, DataReport, Example, PromptTemplate, Record, collate, read_jsonl, tokenize_record

HH_SEPARATOR = "\n\nAssistant:"


@dataclass(frozen=True)
class Preference:
    """One record as read: a prompt and its responses ordered best first."""

    line: int
    prompt: str
    responses: tuple[str, ...]
    margin: float = 0.0  # the chosen response should win by at least this much (pairwise records only)


def text_field(obj: dict, key: str) -> str:
    """obj[key], which must be a non-empty string (ValueError says what is wrong)."""
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"empty {key!r}")
    return value


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of an HH-RLHF pair: the prompt is their common prefix up to
    and including its last "\\n\\nAssistant:"."""
    common = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        common += 1
    end = chosen.rfind(HH_SEPARATOR, 0, common)
    if end < 0:
        raise ValueError('no "prompt" and no shared prefix ending in "\\n\\nAssistant:" (HH-RLHF format)')
    cut = end + len(HH_SEPARATOR)
    prompt, chosen_response, rejected_response = chosen[:cut], chosen[cut:], rejected[cut:]
    if not chosen_response.strip() or not rejected_response.strip():
        raise ValueError("a response is empty after the shared prompt (HH-RLHF format)")
    return prompt, chosen_response, rejected_response


def parse_preference(obj: object, line: int) -> Preference:
    """One Preference from a JSON value; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "ranked" in obj:
        ranked = obj["ranked"]
        if not isinstance(ranked, list) or len(ranked) < 2:
            raise ValueError("'ranked' must be a list of at least 2 responses, best first")
        if not all(isinstance(r, str) and r.strip() for r in ranked):
            raise ValueError("'ranked' must hold non-empty strings")
        if "margin" in obj:
            raise ValueError("'margin' applies to chosen/rejected pairs, not to 'ranked' lists")
        return Preference(line, text_field(obj, "prompt"), tuple(ranked))
    missing = [k for k in ("chosen", "rejected") if k not in obj]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(m) for m in missing)}; a record needs 'prompt' + 'chosen' "
                         "+ 'rejected', 'prompt' + 'ranked', or HH-RLHF's 'chosen' + 'rejected'")
    chosen, rejected = text_field(obj, "chosen"), text_field(obj, "rejected")
    margin = obj.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"'margin' must be a finite number, got {margin!r}")
    if "prompt" in obj:
        return Preference(line, text_field(obj, "prompt"), (chosen, rejected), float(margin))
    prompt, chosen, rejected = split_hh(chosen, rejected)
    return Preference(line, prompt, (chosen, rejected), float(margin))


@dataclass(frozen=True)
class PreferenceExample:
    """A tokenized record: one SFT-style example per response (best first), sharing the prompt."""

    line: int
    responses: tuple[Example, ...]
    margin: float = 0.0
    ref_logps: tuple[float, ...] | None = None  # DPO: the reference model's log-prob of each response

    @property
    def num_pairs(self) -> int:
        return len(self.responses) * (len(self.responses) - 1) // 2


def tokenize_preference(record: Preference, tokenizer: Tokenizer, template: PromptTemplate,
                        max_len: int) -> PreferenceExample | None:
    """Each response as `tokenize_record` makes it (cut to fit max_len); None if the prompt leaves no room."""
    examples = []
    for response in record.responses:
        example = tokenize_record(Record(record.line, record.prompt, "", response), tokenizer, template, max_len)
        if example is None:
            return None
        examples.append(example)
    return PreferenceExample(record.line, tuple(examples), record.margin)


def load_preferences(path: str, tokenizer: Tokenizer, template: PromptTemplate, max_len: int, *,
                     skip_bad: bool = False, columns: tuple[tuple[str, str], ...] = ()
                     ) -> tuple[list[PreferenceExample], DataReport]:
    """Read, check and tokenize a preference file (bad lines: DataError naming each FILE:LINE)."""
    records, problems = read_jsonl(path, skip_bad=skip_bad, parse=parse_preference, columns=columns)
    report = DataReport(records=len(records), skipped=problems)
    examples = []
    for record in records:
        example = tokenize_preference(record, tokenizer, template, max_len)
        if example is None:
            report.dropped.append(record.line)
            continue
        if any(e.truncated for e in example.responses):
            report.truncated.append(record.line)
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no record fits the {max_len}-token context")
    return examples, report


def with_ref_logps(example: PreferenceExample, logps: list[float]) -> PreferenceExample:
    return replace(example, ref_logps=tuple(logps))


# --------------------------------------------------------------------------- batches


@dataclass
class PreferenceBatch:
    """Every response of a few records as rows (right-padded), and which rows form the ranked pairs."""

    input_ids: Tensor  # [R, T] prompt + response (+ EOS), without the last token; padding is EOS
    targets: Tensor  # [R, T] next tokens on the response positions, IGNORE_INDEX elsewhere
    reward_ids: Tensor  # [R, T + 1] the full rows (what a reward model reads), right-padded with EOS
    better: Tensor  # [P] row of the preferred response of each pair
    worse: Tensor  # [P] row of the other one
    pair_record: Tensor  # [P] record (0..N-1) each pair belongs to
    row_record: Tensor  # [R] record each row belongs to
    margins: Tensor  # [N] each record's margin
    ref_logps: Tensor | None  # [R] reference log-probs of the rows (DPO, precomputed), else None

    @property
    def num_records(self) -> int:
        return self.margins.shape[0]

    def to(self, device: torch.device) -> "PreferenceBatch":
        moved = {name: (value.to(device) if isinstance(value, Tensor) else value)
                 for name, value in self.__dict__.items()}
        return PreferenceBatch(**moved)


def pad_rows(rows: list[list[int]], pad_id: int) -> Tensor:
    """Token rows right-padded with `pad_id` to the longest: [len(rows), max length]."""
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def collate_preferences(examples: list[PreferenceExample], pad_id: int) -> PreferenceBatch:
    """Rows = responses in record order (best first); pairs (i, j), i ranked above j, within each record."""
    rows = [response for example in examples for response in example.responses]
    lm = collate(rows, pad_id)
    reward_ids = pad_rows([row.ids for row in rows], pad_id)
    better, worse, pair_record, row_record = [], [], [], []
    start = 0
    for record, example in enumerate(examples):
        k = len(example.responses)
        row_record += [record] * k
        for i in range(k):
            for j in range(i + 1, k):
                better.append(start + i)
                worse.append(start + j)
                pair_record.append(record)
        start += k
    has_ref = all(e.ref_logps is not None for e in examples)
    ref = torch.tensor([x for e in examples for x in e.ref_logps], dtype=torch.float32) if has_ref else None
    return PreferenceBatch(
        lm.input_ids, lm.targets, reward_ids, torch.tensor(better), torch.tensor(worse), torch.tensor(pair_record),
        torch.tensor(row_record), torch.tensor([e.margin for e in examples], dtype=torch.float32), ref,
    )


def per_record_mean(values: Tensor, record: Tensor, num_records: int) -> Tensor:
    """Mean of `values` [P] within each record: [N]."""
    sums = torch.zeros(num_records, dtype=values.dtype, device=values.device).index_add_(0, record, values)
    counts = torch.zeros(num_records, dtype=values.dtype, device=values.device).index_add_(
        0, record, torch.ones_like(values))
    return sums / counts
