"""Next-token selection: small pure functions over logits [B, V].

Processor order and semantics are transformers': repetition penalty -> no-repeat n-grams -> bad words ->
min new tokens, then, when sampling, temperature -> top-k -> top-p -> min-p -> typical-p, then a draw.
Temperature 0 means greedy. Every draw goes through an optional `torch.Generator`, so a seed reproduces it.
Processors that look at a row's tokens get its history: ids [B, L] with a 0/1 mask (prompt padding is 0), the
prompt's real tokens and everything generated so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import GenerationError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. `do_sample=False` (or temperature 0) is greedy."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # ban any token that would repeat an n-gram of the row (prompt included)
    min_new_tokens: int = 0  # EOS is banned until this many tokens are generated
    bad_words_ids: tuple[tuple[int, ...], ...] = ()  # token sequences never to complete
    min_p: float | None = None  # keep tokens with probability >= min_p x the top token's
    typical_p: float | None = None  # locally typical sampling's mass

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise GenerationError(f"top_k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise GenerationError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("no_repeat_ngram_size", "min_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise GenerationError(f"{name} must be a non-negative integer, got {value!r}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise GenerationError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.typical_p is not None and not 0 < self.typical_p <= 1:
            raise GenerationError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if any(not word or any(not isinstance(t, int) or t < 0 for t in word) for word in self.bad_words_ids):
            raise GenerationError("bad_words_ids must be non-empty sequences of non-negative token ids")

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @property
    def needs_history(self) -> bool:
        """Whether a processor reads the rows' tokens (no-repeat n-grams, multi-token bad words)."""
        return self.no_repeat_ngram_size > 0 or any(len(word) > 1 for word in self.bad_words_ids)


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty (as transformers applies it): seen tokens' positive logits / penalty, negative * penalty.

    seen: bool [B, V], True for tokens already in the row (prompt and generated, padding excluded).
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k most likely tokens per row, and every token tied with the k-th (transformers' rule: in bf16
    ties are common); the rest become -inf."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the most likely tokens until their probability reaches p (at least one token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [B, V]
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p  # the first token has mass_before 0 < p, so it always stays
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: Tensor, min_p: float) -> Tensor:
    """Drop tokens whose probability is below min_p x the top token's (the top token always stays)."""
    probs = torch.softmax(logits, dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    drop.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(drop, float("-inf"))


def typical_filter(logits: Tensor, mass: float) -> Tensor:
    """Locally typical sampling (Meister et al. 2022): keep the tokens whose surprisal is closest to the
    entropy until their probability reaches `mass` (at least one)."""
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # [B, 1]
    distance, order = torch.sort((-logp - entropy).abs(), dim=-1)  # most typical first
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=-1, keepdim=True).clamp(max=logits.shape[-1] - 1)  # [B, 1]
    drop_sorted = distance > distance.gather(-1, last)
    drop_sorted[..., :1] = False
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def ban_repeated_ngrams(logits: Tensor, history: Tensor, valid: Tensor, n: int) -> Tensor:
    """-inf for every token that would complete an n-gram already in the row (prompt included, padding not).

    history, valid: [B, L] ids and 0/1 mask of each row's tokens so far (left padding has mask 0)."""
    B, L = history.shape
    if n < 1 or L < n:  # no complete n-gram in the rows yet
        return logits
    V = logits.shape[-1]
    if n == 1:  # every token already in the row
        return logits.masked_fill(_token_mask(history, valid.bool(), V), float("-inf"))
    grams = history.unfold(1, n, 1)  # [B, L - n + 1, n]
    real = valid.bool().unfold(1, n, 1).all(-1)  # [B, L - n + 1]: no padding inside
    tail = history[:, L - n + 1:]  # [B, n - 1]: the row's last n - 1 tokens
    tail_real = valid.bool()[:, L - n + 1:].all(-1, keepdim=True)  # [B, 1]
    match = (grams[..., :-1] == tail[:, None, :]).all(-1) & real & tail_real  # [B, L - n + 1]
    return logits.masked_fill(_token_mask(grams[..., -1], match, V), float("-inf"))


def _token_mask(ids: Tensor, keep: Tensor, vocab_size: int) -> Tensor:
    """bool [B, V]: True at every id of `ids` [B, N] where `keep` [B, N] is True."""
    spare = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    spare.scatter_(1, ids.masked_fill(~keep, vocab_size).clamp(max=vocab_size), True)
    return spare[:, :vocab_size]


def ban_bad_words(logits: Tensor, words: tuple[tuple[int, ...], ...], history: Tensor | None,
                  eos_token_id: int | None) -> Tensor:
    """-inf for the last token of every bad word whose other tokens end the row (one-token words: always).
    A bad word that is just EOS is ignored, as transformers does."""
    banned = torch.zeros_like(logits, dtype=torch.bool)
    for word in words:
        if list(word) == [eos_token_id] or word[-1] >= logits.shape[-1]:
            continue
        if len(word) == 1:
            banned[:, word[-1]] = True
        elif history is not None and history.shape[1] >= len(word) - 1:
            prefix = torch.tensor(word[:-1], device=history.device)
            banned[:, word[-1]] |= (history[:, history.shape[1] - len(word) + 1:] == prefix).all(-1)
    return logits.masked_fill(banned, float("-inf"))


def process_logits(logits: Tensor, params: SamplingParams, seen: Tensor | None, *, history: Tensor | None = None,
                   valid: Tensor | None = None, new_tokens: int = 0, eos_token_id: int | None = None) -> Tensor:
    """Apply the processors in transformers' order to logits [B, V] (float32 in, float32 out).

    seen: bool [B, V] tokens in each row (repetition penalty); history/valid: [B, L] each row's ids and mask
    (n-grams, bad words); new_tokens: tokens generated so far (min_new_tokens)."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.no_repeat_ngram_size and history is not None:
        logits = ban_repeated_ngrams(logits, history, valid if valid is not None else torch.ones_like(history),
                                     params.no_repeat_ngram_size)
    if params.bad_words_ids:
        logits = ban_bad_words(logits, params.bad_words_ids, history, eos_token_id)
    if params.min_new_tokens and new_tokens < params.min_new_tokens and eos_token_id is not None:
        logits = logits.clone()
        logits[:, eos_token_id] = float("-inf")
    if params.greedy:
        return logits
    logits = apply_temperature(logits, params.temperature)
    if params.top_k is not None:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p is not None:
        logits = top_p_filter(logits, params.top_p)
    if params.min_p is not None:
        logits = min_p_filter(logits, params.min_p)
    if params.typical_p is not None and params.typical_p < 1.0:
        logits = typical_filter(logits, params.typical_p)
    return logits


def select_next(logits: Tensor, params: SamplingParams, seen: Tensor | None, generator: torch.Generator | None,
                **context) -> Tensor:
    """Next token ids [B] from last-position logits [B, V] (`context`: `process_logits`'s keyword arguments)."""
    logits = process_logits(logits.float(), params, seen, **context)
    if params.greedy:
        return logits.argmax(dim=-1)
    return draw(torch.softmax(logits, dim=-1), generator)


def draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row [B] drawn from probs [B, V]: `torch.multinomial`'s distribution.

    `torch.multinomial` draws an exponential variate for every token of every row (5 ms a step for 5 rows of
    GPT-2's 50,257 on a 2-core EPYC, a seventh of a sampling step). After top-k / top-p / min-p / typical
    filtering a row keeps few tokens, and the others can never be drawn: when no row keeps more than 1/16 of
    the vocabulary, the draw is among the kept tokens only (`topk` gathers them, widest row's count). The same
    distribution; which random numbers are used depends on how many tokens the rows keep, never on time."""
    kept = max(int((probs > 0).sum(-1).max()), 1)  # the widest row's count of drawable tokens
    if kept * 16 > probs.shape[-1]:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    top, index = probs.topk(kept, dim=-1)  # [B, K]: every token each row can draw (and zeros in narrower rows)
    return index.gather(-1, torch.multinomial(top, 1, generator=generator)).squeeze(-1)
