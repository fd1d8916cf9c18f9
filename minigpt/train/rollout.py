"""Rollouts for PPO: prompts in, sampled responses with their log-probs out, and the full forward pass that
recomputes log-probs (and values) of a batch of rollouts.

A batch of rollouts is the prompts left-padded with EOS ([B, Q], mask 0 on padding) followed by the responses
right-padded after their end ([B, R], mask 1 on every sampled token, the EOS included). Logits are divided by
the sampling temperature wherever a log-prob is taken, in generation and in training alike (a PPO pitfall:
otherwise pi_old and pi disagree and the KL is wrong). Sampling is plain temperature sampling: top-k / top-p
would make the sampled distribution differ from the one whose log-probs PPO uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..inference.generation import decode_step, prefill, release
from ..inference.sampling import SamplingParams, select_next
from ..inference.text import left_pad
from ..model import Transformer
from .rl import last_token_index


@dataclass
class Rollouts:
    """Sampled responses to a batch of prompts, and what PPO computes about them."""

    query_ids: Tensor  # [B, Q] long, left-padded with EOS
    query_mask: Tensor  # [B, Q] long, 0 on padding
    response_ids: Tensor  # [B, R] long, EOS after each response's end
    response_mask: Tensor  # [B, R] float, 1 on sampled tokens (the EOS included)
    logprobs: Tensor  # [B, R] float, log pi_old(token) at the sampling temperature; 0 on padding
    eos_id: int
    values: Tensor | None = None  # [B, R] value estimates before each token
    advantages: Tensor | None = None  # [B, R] whitened GAE advantages
    returns: Tensor | None = None  # [B, R] value targets

    @property
    def ended(self) -> Tensor:
        """[B] bool: the response ends with EOS (else it ran into max_new_tokens)."""
        rows = torch.arange(self.response_ids.shape[0], device=self.response_ids.device)
        last = self.response_ids[rows, last_token_index(self.response_mask)]  # [B]
        return (last == self.eos_id) & self.response_mask.bool().any(-1)

    def rows(self, index: Tensor) -> "Rollouts":
        """The rollouts at `index` (every tensor field indexed on its first dim)."""
        return Rollouts(**{f.name: (v[index] if isinstance(v := getattr(self, f.name), Tensor) else v)
                           for f in fields(self)})

    def training_fields(self) -> dict[str, Tensor]:
        """The keyword arguments of `PPOLoss.forward`."""
        return {"query_ids": self.query_ids, "query_mask": self.query_mask, "response_ids": self.response_ids,
                "response_mask": self.response_mask, "old_logprobs": self.logprobs, "old_values": self.values,
                "advantages": self.advantages, "returns": self.returns}


@torch.no_grad()
def sample_responses(policy: Transformer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
                     eos_id: int, generator: torch.Generator | None) -> Rollouts:
    """Sample one response per prompt with the KV cache, gathering log pi(token) (temperature-scaled) as it goes.

    A row stops at its EOS (kept as its last token); later positions are padding (EOS ids, mask 0).
    """
    query_ids, query_mask = (t.to(policy.device) for t in left_pad(prompts, eos_id))
    B, Q = query_ids.shape
    params = SamplingParams(do_sample=True, temperature=temperature)
    logits, state = prefill(policy, query_ids, query_mask, Q + max_new_tokens)
    finished = torch.zeros(B, dtype=torch.bool, device=policy.device)
    tokens, logps, valid = [], [], []
    try:
        for step in range(max_new_tokens):
            token = select_next(logits, params, None, generator).masked_fill(finished, eos_id)  # [B]
            logp = (logits.float() / temperature).log_softmax(-1).gather(-1, token[:, None]).squeeze(-1)  # [B]
            tokens.append(token)
            valid.append(~finished)
            logps.append(logp.masked_fill(finished, 0.0))
            finished = finished | (token == eos_id)
            if step + 1 == max_new_tokens or bool(finished.all()):
                break
            logits = decode_step(policy, token, state)
    finally:
        release(state)  # the compiled path's static cache, if this took it
    return Rollouts(query_ids, query_mask, torch.stack(tokens, 1), torch.stack(valid, 1).float(),
                    torch.stack(logps, 1), eos_id)


@dataclass
class ResponseOutputs:
    logprobs: Tensor | None  # [B, R] log pi(token) at the temperature; 0 on padding
    values: Tensor | None  # [B, R] value head outputs; 0 on padding
    entropy: Tensor | None  # [B, R] entropy of the temperature-scaled next-token distribution; 0 on padding


def response_outputs(policy: Transformer, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor,
                     response_mask: Tensor, *, temperature: float, value_head: nn.Module | None = None,
                     entropy: bool = False, logprobs: bool = True) -> ResponseOutputs:
    """One full (uncached) forward pass over prompts + responses: per-token log-probs of the responses (unless
    `logprobs` is False: values alone skip the LM head), and optionally values and entropies. The LM head runs on
    response tokens only."""
    Q = query_ids.shape[1]
    keep = response_mask.bool()  # [B, R]
    ids = torch.cat([query_ids, response_ids], dim=1)  # [B, Q + R]
    mask = torch.cat([query_mask.long(), keep.long()], dim=1)  # [B, Q + R]
    hidden = policy.features(ids, mask)[:, Q - 1: -1]  # [B, R, C]: the state that predicts each response token
    values = token_logps = entropies = None
    if value_head is not None:
        values = value_head(hidden).squeeze(-1).float() * keep  # [B, R]
    if logprobs or entropy:
        token_logps, token_entropy = policy.token_logprobs(hidden[keep], response_ids[keep],
                                                           temperature=temperature,
                                                           entropy=entropy)  # [N] each, never the [N, V] logits
        zeros = torch.zeros(keep.shape, dtype=token_logps.dtype, device=token_logps.device)
        token_logps = zeros.masked_scatter(keep, token_logps)
        if entropy:  # a statistic, not trained on
            entropies = zeros.masked_scatter(keep, token_entropy)
    return ResponseOutputs(token_logps if logprobs else None, values, entropies)
