"""KV-cached generation: prefill the prompt once, then decode one token per row per step.

Ragged prompts are left-padded: all rows share cache slots, padding slots are masked out and position ids skip
them, so every row computes what it computes alone. A row that emits EOS (or a stop sequence) is done and is
padded from then on; the loop ends when every row is done or `max_new_tokens` is reached.

Context policy: GPT-2 has `n_positions` (1024) learned positions. The last generated token is never fed back, so
a prompt of T tokens fits when T + max_new_tokens - 1 <= n_positions. When it does not, `context="error"` (the
default) raises GenerationError saying what fits; `context="truncate"` drops the oldest prompt tokens to make room
and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import GenerationError
from .model import GPT, KVCache, attention_mask_to_positions
from .sampling import SamplingParams, select_next

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
    model: GPT, input_ids: Tensor, attention_mask: Tensor | None, max_new_tokens: int, context: str
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
def prefill(model: GPT, input_ids: Tensor, attention_mask: Tensor, max_len: int, *,
            allow_static: bool = True) -> tuple[Tensor, DecodeState]:
    """Run the whole prompt [B, T] once into a fresh cache of max_len slots; return last logits [B, V].

    On the compiled path the generation takes the model's static cache (unless `allow_static` is False: beam
    search re-indexes its cache); a second generation running at the same time (a stream still open) gets an
    eager cache of its own instead, so the two never share slots."""
    B, T = input_ids.shape
    decoder = getattr(model, "_static_decoder", None) if allow_static else None
    if decoder is not None and not decoder.busy:
        decoder.busy = True
        cache = decoder.cache_for(B, max_len)
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
        state.decoder.busy = False
        state.decoder = None


@torch.no_grad()
def decode_step(model: GPT, tokens: Tensor, state: DecodeState) -> Tensor:
    """Feed one token per row [B] at the next slot; return logits [B, V] for the token after it."""
    slot = state.slot
    state.slot_valid[:, slot] = True
    slots = torch.tensor([slot], device=tokens.device)
    if state.decoder is not None:
        logits = state.decoder(tokens[:, None], state.slot_valid, state.next_position[:, None], slots)
    else:
        logits = model(tokens[:, None], state.slot_valid, position_ids=state.next_position[:, None],
                       cache=state.cache, cache_slots=slots, last_only=True)[:, -1]
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


@torch.no_grad()
def stream(
    model: GPT,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    params: SamplingParams = SamplingParams(),
    num_return_sequences: int = 1,
    attention_mask: Tensor | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    stop: StopCheck | None = None,
    seed: int | None = None,
    context: str = "error",
    logprobs: bool = False,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield (new tokens [B*N], finished [B*N] bool) once per step. Finished rows yield the pad token.

    The prompt is input_ids [B, T], left-padded where attention_mask [B, T] is 0. With `logprobs`, each step also
    yields the tokens' log-probabilities under the model's unprocessed distribution (log-softmax of the raw
    logits) [B*N], NaN for rows that had already finished.
    """
    check_generation_args(max_new_tokens, num_return_sequences)
    input_ids, attention_mask = prepare_prompt(model, input_ids, attention_mask, max_new_tokens, context)
    device = model.device
    if max_new_tokens == 0:
        return
    pad = next(i for i in (pad_token_id, eos_token_id, model.config.eos_token_id) if i is not None)
    eos_for_processors = eos_token_id if eos_token_id is not None else model.config.eos_token_id
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache_len = input_ids.shape[1] + max_new_tokens - 1  # the last new token is never fed back

    if getattr(model, "_static_decoder", None) is not None and num_return_sequences > 1:
        # the static cache cannot be re-indexed in place: prefill every sample's copy of its prompt
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        logits, state = prefill(model, input_ids, attention_mask, cache_len)
    else:
        logits, state = prefill(model, input_ids, attention_mask, cache_len)
        logits = expand_rows(state, logits, num_return_sequences)
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
    try:
        yield from _decode_loop(model, logits, state, input_ids, attention_mask, max_new_tokens, params=params,
                                eos_token_id=eos_token_id, eos_for_processors=eos_for_processors, pad=pad,
                                stop=stop, generator=generator, logprobs=logprobs)
    finally:
        release(state)


def _decode_loop(model: GPT, logits: Tensor, state: DecodeState, input_ids: Tensor, attention_mask: Tensor,
                 max_new_tokens: int, *, params: SamplingParams, eos_token_id: int | None, eos_for_processors: int,
                 pad: int, stop: StopCheck | None, generator: torch.Generator | None, logprobs: bool = False,
                 ) -> Iterator[tuple[Tensor, ...]]:
    """The token-by-token loop of `stream` over rows that are already expanded (prompt [rows, T] each)."""
    device = logits.device
    rows = logits.shape[0]
    if params.repetition_penalty != 1.0:
        state.seen = seen_tokens(input_ids, attention_mask, model.config.vocab_size)
    history, valid = (input_ids, attention_mask.bool()) if params.needs_history else (None, None)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    for step in range(max_new_tokens):
        tokens = select_next(logits, params, state.seen, generator, history=history, valid=valid, new_tokens=step,
                             eos_token_id=eos_for_processors)  # [rows]
        tokens = tokens.masked_fill(finished, pad)
        if state.seen is not None:
            state.seen[torch.arange(rows, device=device), tokens] = True
        if history is not None:
            history = torch.cat([history, tokens[:, None]], dim=1)
            valid = torch.cat([valid, ~finished[:, None]], dim=1)
        newly_finished = finished.clone()
        if eos_token_id is not None:
            newly_finished |= tokens == eos_token_id
        if stop is not None:
            already_done = finished.tolist()  # one host copy per step, not one per row
            for row, token in enumerate(tokens.tolist()):
                if not already_done[row]:
                    generated[row].append(token)
                    if stop(generated[row]):
                        newly_finished[row] = True
        if logprobs:
            raw = logits.float().log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
            yield tokens, newly_finished, raw.masked_fill(finished, float("nan"))
        else:
            yield tokens, newly_finished
        finished = newly_finished
        if step + 1 == max_new_tokens or bool(finished.all()):
            return
        logits = decode_step(model, tokens, state)


@dataclass
class GenerateOutput:
    """What `generate(..., return_dict=True)` returns."""

    sequences: Tensor  # [B * N, T + new]: what `generate` returns by default
    sequences_scores: Tensor | None  # beams: each returned hypothesis's length-penalised score; None otherwise
    token_logprobs: Tensor  # [B * N, new]: log-softmax of the raw logits at each generated token; NaN after the end


def generate(
    model: GPT,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    num_return_sequences: int = 1,
    context: str = "error",
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    return_dict: bool = False,
    **kwargs,
) -> Tensor | GenerateOutput:
    """Prompt plus continuation: LongTensor [B * num_return_sequences, T + new] (see `stream` for arguments),
    or with `return_dict` a GenerateOutput. `num_beams > 1` is beam search (`minigpt.beam`).

    Rows that finish early are padded to the common length with the pad token (EOS by default); beam search
    crops to its longest returned hypothesis, as transformers does.
    """
    check_generation_args(max_new_tokens, num_return_sequences)
    padding = leading_padding(attention_mask) if attention_mask is not None else 0
    prompt, attention_mask = prepare_prompt(model, input_ids, attention_mask, max_new_tokens, context)
    if num_beams != 1:
        from .beam import beam_search

        if kwargs.pop("stop", None) is not None or kwargs.pop("seed", None) is not None:
            raise GenerationError("stop sequences and seeds do not apply to beam search")
        result = beam_search(model, prompt, max_new_tokens, num_beams=num_beams, attention_mask=attention_mask,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             num_return_sequences=num_return_sequences, **kwargs)
        sequences, scores, logprobs = result.sequences, result.scores, result.token_logprobs
    else:
        steps = list(stream(model, prompt, max_new_tokens, attention_mask=attention_mask,
                            num_return_sequences=num_return_sequences, logprobs=return_dict, **kwargs))
        rows = prompt.repeat_interleave(num_return_sequences, dim=0)
        new = torch.stack([s[0] for s in steps], 1) if steps else rows[:, :0]
        sequences, scores = torch.cat([rows, new], 1), None
        logprobs = (torch.stack([s[2] for s in steps], 1) if steps else new.float()) if return_dict else None
    if padding and prompt.shape[1] + padding == input_ids.shape[1]:  # give back the input's all-padding columns
        lead = input_ids[:, :padding].to(sequences.device).repeat_interleave(num_return_sequences, dim=0)
        sequences = torch.cat([lead, sequences], dim=1)
    if return_dict:
        return GenerateOutput(sequences, scores, logprobs)
    return sequences


def stop_sequences_check(stop: Sequence[Sequence[int]]) -> StopCheck:
    """A stop check that fires when a row's generated ids end with any of these id sequences."""
    sequences = [list(s) for s in stop if len(s) > 0]

    def check(ids: list[int]) -> bool:
        return any(ids[-len(s):] == s for s in sequences if len(ids) >= len(s))

    return check
