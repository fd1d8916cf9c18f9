"""Beam search with transformers' semantics (its vectorised `_beam_search`), token for token.

Each step, for every prompt: log-softmax of the next-token logits of its `num_beams` running beams, the logits
processors on those log-probs, plus each beam's running score; the top 2·num_beams candidates over
num_beams × vocab. A candidate that ends in EOS (or reaches max_new_tokens) is a finished hypothesis if it ranks
among the first num_beams candidates, scored sum(log-probs) / L**length_penalty (L = generated tokens, EOS
included); the num_beams best unfinished candidates run on. Running scores start at [0, -1e9, ...] so the first
step does not pick the same token num_beams times. The finished list keeps the num_beams best hypotheses.

Stopping (`early_stopping`): True stops a prompt once num_beams hypotheses are finished; False (the default)
once the best running score divided by the current generated length**length_penalty cannot beat the worst
finished one; "never" computes that bound at the maximum length when length_penalty > 0.

The KV cache holds batch × num_beams rows and is re-indexed by each surviving beam's origin every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import GenerationError
from ..model import Transformer
from .decode import (DecodeState, decode_step, expand_rows, pad_token, prefill, prepare_prompt, release, resolve_eos,
                     seen_tokens)
from .sampling import SamplingParams, process_logits

NEG = -1.0e9  # transformers' "minus infinity" for scores that must lose


@dataclass
class BeamResult:
    sequences: Tensor  # [B * R, T + L] prompt + best hypotheses, padded with the pad token, cropped to the longest
    scores: Tensor  # [B * R] length-penalised scores (transformers' sequences_scores)
    token_logprobs: Tensor  # [B * R, L] log-softmax of the raw logits at each generated token; NaN after the end


def check_beam_args(num_beams: int, num_return_sequences: int, params: SamplingParams, early_stopping) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise GenerationError(f"num_beams must be a positive integer, got {num_beams!r}")
    if num_return_sequences > num_beams:
        raise GenerationError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams} "
                              "(beam search returns its best num_beams hypotheses at most)")
    if params.do_sample:
        raise GenerationError("beam sampling (num_beams > 1 with do_sample) is not supported; use beams or sampling")
    if early_stopping not in (True, False, "never"):
        raise GenerationError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def gather_beams(tensor: Tensor, index: Tensor) -> Tensor:
    """tensor [B, K, ...] -> [B, k, ...] along dim 1 at index [B, k]."""
    shape = index.shape + (1,) * (tensor.dim() - 2)
    return tensor.gather(1, index.view(shape).expand(index.shape + tensor.shape[2:]))


def reorder_rows(state: DecodeState, rows: Tensor) -> None:
    """Keep cache rows `rows` (each surviving beam's origin), with their masks and positions."""
    state.cache.reorder(rows)
    state.slot_valid = state.slot_valid[rows]
    state.next_position = state.next_position[rows]


@torch.no_grad()
def beam_search(
    model: Transformer,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    num_beams: int,
    attention_mask: Tensor | None = None,
    params: SamplingParams = SamplingParams(),
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    context: str = "error",
) -> BeamResult:
    """The `num_return_sequences` best hypotheses of each prompt of a left-padded batch [B, T], best first."""
    check_beam_args(num_beams, num_return_sequences, params, early_stopping)
    prompt, mask = prepare_prompt(model, input_ids, attention_mask, max_new_tokens, context)
    B, T = prompt.shape
    eos = resolve_eos(eos_token_id, model.config)
    pad = pad_token(pad_token_id, eos, model.config)
    device, V, K = model.device, model.config.vocab_size, 2 * num_beams
    total = T + max_new_tokens
    if max_new_tokens == 0:
        sequences = prompt.repeat_interleave(num_return_sequences, 0)
        return BeamResult(sequences, torch.zeros(B * num_return_sequences, device=device),
                          torch.zeros(B * num_return_sequences, 0, device=device))

    running = torch.full((B, num_beams, total), pad, dtype=torch.long, device=device)
    running[:, :, :T] = prompt[:, None]
    running_logps = torch.full((B, num_beams, max_new_tokens), float("nan"), device=device)
    running_scores = torch.zeros(B, num_beams, device=device)
    running_scores[:, 1:] = NEG
    running_origin = torch.full((B, num_beams, max_new_tokens), -1, dtype=torch.long, device=device)
    finished, finished_logps = running.clone(), running_logps.clone()
    finished_scores = torch.full((B, num_beams), NEG, device=device)
    finished_origin = running_origin.clone()
    is_finished = torch.zeros(B, num_beams, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_top = torch.arange(K, device=device) < num_beams  # [K]: only the first num_beams candidates may finish
    offsets = torch.arange(B, device=device)[:, None] * num_beams  # [B, 1]: flat row of each prompt's beam 0
    prompt_valid = mask.bool().repeat_interleave(num_beams, 0)  # [B * nb, T]

    logits, state = prefill(model, prompt, mask, total - 1, allow_static=False)
    try:
        logits = expand_rows(state, logits, num_beams)  # [B * nb, V]
        for step in range(max_new_tokens):
            cur = T + step
            raw = logits.float().log_softmax(-1)  # [B * nb, V]
            history = running[:, :, :cur].reshape(B * num_beams, cur)
            valid = torch.cat([prompt_valid, prompt_valid.new_ones(B * num_beams, step)], 1)
            seen = None
            if params.repetition_penalty != 1.0:
                seen = seen_tokens(history, valid, V)
            scores = process_logits(raw, params, seen, history=history, valid=valid, new_tokens=step,
                                    eos_token_id=eos)
            total_scores = (scores.view(B, num_beams, V) + running_scores[:, :, None]).view(B, num_beams * V)
            top_scores, top_index = torch.topk(total_scores, K)  # [B, K]
            origin, token = top_index // V, top_index % V  # [B, K]
            cand = gather_beams(running, origin)  # [B, K, total]
            cand[:, :, cur] = token
            cand_logps = gather_beams(running_logps, origin)
            cand_logps[:, :, step] = gather_beams(raw.view(B, num_beams, V), origin).gather(2, token[..., None])[..., 0]
            cand_origin = gather_beams(running_origin, origin)
            cand_origin[:, :, step] = origin + offsets
            hits = (token == (eos if eos is not None else -1)) | (step + 1 == max_new_tokens)  # [B, K]

            # the num_beams best candidates that go on
            keep = torch.topk(top_scores + hits.float() * NEG, num_beams).indices  # [B, nb]
            running, running_logps = gather_beams(cand, keep), gather_beams(cand_logps, keep)
            running_scores = gather_beams(top_scores + hits.float() * NEG, keep)
            running_origin = gather_beams(cand_origin, keep)

            # finished hypotheses: merge the new ones into the best num_beams
            done_now = hits & in_top[None, :]
            penalised = top_scores / ((step + 1) ** length_penalty)
            full = is_finished.all(-1, keepdim=True) & (early_stopping is True)
            penalised = penalised + full.float() * NEG + (~improvable).float() * NEG + (~done_now).float() * NEG
            merged_scores = torch.cat([finished_scores, penalised], 1)  # [B, nb + K]
            best = torch.topk(merged_scores, num_beams).indices
            finished = gather_beams(torch.cat([finished, cand], 1), best)
            finished_logps = gather_beams(torch.cat([finished_logps, cand_logps], 1), best)
            finished_origin = gather_beams(torch.cat([finished_origin, cand_origin], 1), best)
            finished_scores = gather_beams(merged_scores, best)
            is_finished = gather_beams(torch.cat([is_finished, done_now], 1), best)

            # can a running beam still beat the worst finished one?
            length = (max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1)
            best_possible = running_scores[:, :1] / (length ** length_penalty)
            worst = torch.where(is_finished, finished_scores.min(1, keepdim=True).values, torch.full_like(
                finished_scores, NEG))
            improvable = improvable & (best_possible > worst).any(-1, keepdim=True)
            go_on = improvable.any() & ~(is_finished.all() & (early_stopping is True)) & ~hits.all()
            if step + 1 == max_new_tokens or not bool(go_on):
                break
            reorder_rows(state, running_origin[:, :, step].reshape(-1))
            logits = decode_step(model, running[:, :, cur].reshape(-1), state)
    finally:
        release(state)

    R = num_return_sequences
    sequences = finished[:, :R].reshape(B * R, total)
    scores = finished_scores[:, :R].reshape(B * R)
    origin = finished_origin[:, :R].reshape(B * R, max_new_tokens)
    generated = int((origin >= 0).sum(1).max())
    logps = finished_logps[:, :R].reshape(B * R, max_new_tokens)[:, :generated]
    return BeamResult(sequences[:, : T + generated], scores, logps)
