"""The pieces every decoding loop shares: prompt checks and the context policy, prefill, one decode step.

The sampling loop (`minigpt.inference.generation`), beam search (`minigpt.inference.beam`) and PPO's rollouts
(`minigpt.train.rollout`) all build on these; none of them imports another loop.

Ragged prompts are left-padded: all rows share cache slots, padding slots are masked out and position ids skip
them, so every row computes what it computes alone.

Context policy: GPT-2 has `n_positions` (1024) learned positions. The last generated token is never fed back, so
a prompt of T tokens fits when T + max_new_tokens - 1 <= n_positions. When it does not, `context="error"` (the
default) raises GenerationError saying what fits; `context="truncate"` drops the oldest prompt tokens to make room
and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import GenerationError
from ..model import KVCache, Transformer, attention_mask_to_positions

# A stop check gets one row's generated ids so far and says whether the row is finished.
StopCheck = Callable[[list[int]], bool]


@dataclass
class DecodeState:
    """What the decode loop carries from step to step (all rows share cache slots)."""

    cache: KVCache
    slot_valid: Tensor  # bool [B, L]: which cache slots hold real tokens
    next_position: Tensor  # long [B]: the position id of each row's next token
    seen: Tensor | None  # bool [B, V]: tokens each row has seen (for the repetition penalty)
    slot: int  # the next free cache slot
    decoder: object | None = None  # the compiled path's StaticDecoder when this generation holds it


def resolve_eos(eos_token_id: int | None, config) -> int | None:
    """The token that ends a row, by transformers' rule: None means the model's EOS (`config.eos_token_id`), for
    greedy, sampling and beams alike; a negative id means rows never end at a token (only at the length)."""
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    return eos if eos is not None and eos >= 0 else None


def pad_token(pad_token_id: int | None, eos: int | None, config) -> int:
    """What finished rows are filled with: `pad_token_id`, else the ending token, else the model's EOS."""
    return next(i for i in (pad_token_id, eos, config.eos_token_id, 0) if i is not None and i >= 0)


def check_generation_args(max_new_tokens: int, num_return_sequences: int) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if isinstance(num_return_sequences, bool) or not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise GenerationError(f"num_return_sequences must be a positive integer, got {num_return_sequences!r}")


def leading_padding(attention_mask: Tensor) -> int:
    """How many leading columns are padding in every row (a batch may arrive over-padded)."""
    if not attention_mask.any():
        return attention_mask.shape[1]
    return int((attention_mask.sum(0) > 0).long().argmax())


def fit_context(
    input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, n_positions: int, policy: str
) -> tuple[Tensor, Tensor]:
    """Apply the context policy to a left-padded batch; return (input_ids, attention_mask) that fit."""
    if policy not in ("error", "truncate"):
        raise GenerationError(f"context policy must be 'error' or 'truncate', got {policy!r}")
    if max_new_tokens > n_positions:
        raise GenerationError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {n_positions}-token context"
        )
    keep_from = leading_padding(attention_mask)
    input_ids, attention_mask = input_ids[:, keep_from:], attention_mask[:, keep_from:]
    prompt_len = input_ids.shape[1]
    room = n_positions - max_new_tokens + 1  # the last new token is never fed back
    if prompt_len <= room:
        return input_ids, attention_mask
    if policy == "error":
        raise GenerationError(
            f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds the {n_positions}-token "
            f"context; shorten the prompt to {room} tokens, lower max_new_tokens, or use context='truncate'"
        )
    warnings.warn(f"prompt truncated to its last {room} of {prompt_len} tokens to fit the context", stacklevel=3)
    return input_ids[:, -room:], attention_mask[:, -room:]


def prepare_prompt(
    model: Transformer, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int, context: str
) -> tuple[Tensor, Tensor]:
    """Check a prompt batch, move it to the model's device and apply the context policy."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise GenerationError(f"input_ids must be [batch, length] with length >= 1, got {list(input_ids.shape)}")
    input_ids = input_ids.to(model.device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(model.device)
    if attention_mask.shape != input_ids.shape:
        raise GenerationError(f"attention_mask {list(attention_mask.shape)} must match input_ids {list(input_ids.shape)}")
    if not attention_mask.bool().any(-1).all():
        raise GenerationError("every prompt needs at least one token (a row of the attention mask is all zeros)")
    real = attention_mask.bool()
    if (real[:, :-1] & ~real[:, 1:]).any():
        raise GenerationError("the attention mask has padding after a real token: prompts must be left-padded "
                              "(padding first), as minigpt.text.encode_prompts makes them")
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= model.config.vocab_size:
        raise GenerationError(f"token ids must be in [0, {model.config.vocab_size})")
    return fit_context(input_ids, attention_mask, max_new_tokens, model.config.n_positions, context)


@torch.no_grad()
def prefill(model: Transformer, input_ids: Tensor, attention_mask: Tensor, max_len: int, *,
            allow_static: bool = True) -> tuple[Tensor, DecodeState]:
    """Run the whole prompt [B, T] once into a fresh cache of max_len slots; return last logits [B, V].

    On the compiled path the generation takes the model's static cache where the compiled step serves B rows
    (`StaticDecoder.serves`) and `allow_static` (False: the caller re-indexes the cache, as beam search and
    `expand_rows` do); a second generation running at the same time (a stream still open) gets an eager cache of
    its own instead, so the two never share slots."""
    B, T = input_ids.shape
    decoder = getattr(model, "_static_decoder", None) if allow_static else None
    if decoder is not None and decoder.serves(B) and decoder.claim():  # a lock: two threads never both take it
        try:
            cache = decoder.cache_for(B, max_len)
        except BaseException:
            decoder.give_back()
            raise
        max_len = cache.max_len
    else:
        decoder = None
        cache = KVCache.allocate(model.config, B, max_len, device=input_ids.device, dtype=model.dtype)
    slot_valid = torch.zeros(B, max_len, dtype=torch.bool, device=input_ids.device)
    slot_valid[:, :T] = attention_mask.bool()
    positions = attention_mask_to_positions(attention_mask)  # [B, T]
    slots = torch.arange(T, device=input_ids.device)
    try:
        logits = model(input_ids, slot_valid, position_ids=positions, cache=cache, cache_slots=slots, last_only=True)
    except BaseException:
        release(DecodeState(cache, slot_valid, attention_mask.long().sum(-1), None, T, decoder))
        raise
    state = DecodeState(cache, slot_valid, attention_mask.long().sum(-1), None, T, decoder)
    return logits[:, -1], state


def release(state: DecodeState) -> None:
    """Give the compiled path's static cache back (a no-op for an eager cache)."""
    if state.decoder is not None:
        state.decoder.give_back()
        state.decoder = None


@torch.no_grad()
def decode_step(model: Transformer, tokens: Tensor, state: DecodeState) -> Tensor:
    """Feed one token per row [B] at the next slot; return logits [B, V] for the token after it."""
    slot = state.slot
    state.slot_valid[:, slot] = True
    if state.decoder is not None:
        slots = torch.tensor([slot], device=tokens.device)
        logits = state.decoder(tokens[:, None], state.slot_valid, state.next_position[:, None], slots)
    else:  # the model's own one-token step: forward's numbers with less work around the products
        logits = model.decode(tokens, state.next_position, state.cache, slot, state.slot_valid)
    state.next_position += 1
    state.slot += 1
    return logits


def expand_rows(state: DecodeState, logits: Tensor, times: int) -> Tensor:
    """Repeat every row `times` times (num_return_sequences): [B, ...] -> [B * times, ...]."""
    if times == 1:
        return logits
    rows = torch.arange(logits.shape[0], device=logits.device).repeat_interleave(times)
    state.cache.reorder(rows)
    state.slot_valid = state.slot_valid[rows]
    state.next_position = state.next_position[rows]
    return logits[rows]


def seen_tokens(input_ids: Tensor, attention_mask: Tensor, vocab_size: int) -> Tensor:
    """bool [B, V]: which tokens appear in each row's prompt (padding excluded)."""
    B = input_ids.shape[0]
    seen = torch.zeros(B, vocab_size + 1, dtype=torch.bool, device=input_ids.device)
    ids = input_ids.masked_fill(~attention_mask.bool(), vocab_size)  # padding -> a spare column
    return seen.scatter_(1, ids, True)[:, :vocab_size]
