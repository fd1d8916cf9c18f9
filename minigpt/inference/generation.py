"""KV-cached generation: prefill the prompt once, then decode one token per row per step.

A row that emits EOS (or a stop sequence) is done and is padded from then on; the loop ends when every row is
done or `max_new_tokens` is reached. `generate` hands `num_beams > 1` to beam search (`minigpt.inference.beam`).
Prompts, the context policy, prefill and the decode step: `minigpt.inference.decode`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import GenerationError
from ..inspect import run_with_cache
from ..model import Transformer
from .beam import beam_search
from .decode import (DecodeState, StopCheck, check_generation_args, decode_step, expand_rows, leading_padding,
                     pad_token, prefill, prepare_prompt, release, resolve_eos, seen_tokens)
from .fast import compile_decode
from .sampling import SamplingParams, select_next


@torch.no_grad()
def stream(
    model: Transformer,
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

    The prompt is input_ids [B, T], left-padded where attention_mask [B, T] is 0. A row ends at `eos_token_id`:
    None means the model's EOS (transformers' rule), a negative id never ends a row. With `logprobs`, each step also
    yields the tokens' log-probabilities under the model's unprocessed distribution (log-softmax of the raw
    logits) [B*N], NaN for rows that had already finished.
    """
    check_generation_args(max_new_tokens, num_return_sequences)
    input_ids, attention_mask = prepare_prompt(model, input_ids, attention_mask, max_new_tokens, context)
    device = model.device
    if max_new_tokens == 0:
        return
    eos = resolve_eos(eos_token_id, model.config)
    pad = pad_token(pad_token_id, eos, model.config)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    cache_len = input_ids.shape[1] + max_new_tokens - 1  # the last new token is never fed back

    decoder = getattr(model, "_static_decoder", None)
    rows = input_ids.shape[0] * num_return_sequences
    if decoder is not None and num_return_sequences > 1 and decoder.serves(rows):
        # the static cache cannot be re-indexed in place: prefill every sample's copy of its prompt
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        logits, state = prefill(model, input_ids, attention_mask, cache_len)
    else:  # one prefill per prompt, its cache then repeated per sample (an eager cache when repeated)
        logits, state = prefill(model, input_ids, attention_mask, cache_len, allow_static=num_return_sequences == 1)
        logits = expand_rows(state, logits, num_return_sequences)
        input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
    try:
        yield from _decode_loop(model, logits, state, input_ids, attention_mask, max_new_tokens, params=params,
                                eos_token_id=eos, pad=pad, stop=stop, generator=generator, logprobs=logprobs)
    finally:
        release(state)


def _decode_loop(model: Transformer, logits: Tensor, state: DecodeState, input_ids: Tensor, attention_mask: Tensor,
                 max_new_tokens: int, *, params: SamplingParams, eos_token_id: int | None,
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
                             eos_token_id=eos_token_id)  # [rows]
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
    model: Transformer,
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
    or with `return_dict` a GenerateOutput. `num_beams > 1` is beam search (`minigpt.inference.beam`).

    Rows that finish early are padded to the common length with the pad token (EOS by default); beam search
    crops to its longest returned hypothesis, as transformers does.
    """
    check_generation_args(max_new_tokens, num_return_sequences)
    padding = leading_padding(attention_mask) if attention_mask is not None else 0
    prompt, attention_mask = prepare_prompt(model, input_ids, attention_mask, max_new_tokens, context)
    if num_beams != 1:
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


def sequences_mask(model: Transformer, input_ids: Tensor, attention_mask: Tensor | None, sequences: Tensor,
                   max_new_tokens: int, context: str, num_return_sequences: int) -> Tensor:
    """The attention mask [rows, L] of what `generate` returned: its prompt as fitted (and the all-padding
    columns it gives back), then every generated column."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generate has warned about a truncation already
        prompt, mask = prepare_prompt(model, input_ids, attention_mask, max_new_tokens, context)
    padding = leading_padding(attention_mask.to(prompt.device)) if attention_mask is not None else 0
    lead = padding if prompt.shape[1] + padding == input_ids.shape[1] else 0
    mask = mask.repeat_interleave(num_return_sequences, dim=0)  # [rows, T]
    rows, new = sequences.shape[0], sequences.shape[1] - lead - prompt.shape[1]
    return torch.cat([mask.new_zeros(rows, lead), mask, mask.new_ones(rows, new)], dim=1)


def stop_sequences_check(stop: Sequence[Sequence[int]]) -> StopCheck:
    """A stop check that fires when a row's generated ids end with any of these id sequences."""
    sequences = [list(s) for s in stop if len(s) > 0]

    def check(ids: list[int]) -> bool:
        return any(ids[-len(s):] == s for s in sequences if len(ids) >= len(s))

    return check


class GenerationMixin:
    """`generate`, `generate_stream` and `from_pretrained(compile=True)` for a model class built on
    `minigpt.model.Transformer` (as transformers' GenerationMixin; this module never imports that class)."""

    @classmethod
    def from_pretrained(cls, name_or_path, *, compile: bool = False, **kwargs):
        """As the loading mixin's `from_pretrained`; `compile=True` decodes through a torch.compile'd
        static-cache step (CUDA graphs on GPU; see `minigpt.inference.fast`)."""
        model = super().from_pretrained(name_or_path, **kwargs)
        return compile_decode(model) if compile else model

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        num_return_sequences: int = 1,
        attention_mask: Tensor | None = None,
        eos_token_id: int | None = None,
        stop: list[list[int]] | None = None,
        seed: int | None = None,
        context: str = "error",
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
        bad_words_ids: list[list[int]] | None = None,
        min_p: float | None = None,
        typical_p: float | None = None,
        return_dict: bool = False,
        return_cache: bool = False,
    ):
        """Prompt + continuation, LongTensor [B * num_return_sequences, T + new], KV-cached.

        Greedy unless `do_sample`; beam search with `num_beams > 1` (`length_penalty`, `early_stopping` True /
        False / "never", as transformers). Left-pad ragged prompts and pass `attention_mask`. A row stops at
        `eos_token_id` (None: the model's EOS, as transformers; a negative id: never) or when it ends with one
        of the `stop` id sequences, and is padded with EOS after.
        Processors as transformers': `repetition_penalty`, `no_repeat_ngram_size`, `bad_words_ids`,
        `min_new_tokens`, then (sampling) temperature, `top_k`, `top_p`, `min_p`, `typical_p`.
        `context` is the policy when prompt + max_new_tokens passes n_positions: "error" or "truncate".
        `return_dict=True` returns a `GenerateOutput` (`sequences`, `sequences_scores`, `token_logprobs`).
        `return_cache=True` returns (that, ActivationCache): the activations of every returned row, prompt and
        generated tokens, equal to a clean `run_with_cache` over them (one more forward pass; padding masked).
        """
        params = SamplingParams(do_sample, temperature, top_k, top_p, repetition_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
                                bad_words_ids=tuple(tuple(w) for w in bad_words_ids or ()), min_p=min_p,
                                typical_p=typical_p)
        out = generate(
            self, input_ids, max_new_tokens, params=params, num_return_sequences=num_return_sequences,
            attention_mask=attention_mask, eos_token_id=eos_token_id,
            stop=stop_sequences_check(stop) if stop else None, seed=seed, context=context, num_beams=num_beams,
            length_penalty=length_penalty, early_stopping=early_stopping, return_dict=return_dict,
        )
        if not return_cache:
            return out
        sequences = out.sequences if return_dict else out
        return out, run_with_cache(self, sequences, attention_mask=sequences_mask(
            self, input_ids, attention_mask, sequences, max_new_tokens, context, num_return_sequences))[1]

    def generate_stream(self, input_ids: Tensor, max_new_tokens: int, **kwargs) -> Iterator[tuple[Tensor, ...]]:
        """Yield each step's new tokens [B * N] and finished flags; arguments as `stream`."""
        return stream(self, input_ids, max_new_tokens, **kwargs)
