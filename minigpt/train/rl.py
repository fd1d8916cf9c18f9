"""The arithmetic of PPO for language models, one small pure function per detail (Huang et al. 2023,
"The N Implementation Details of RLHF with PPO"; Ouyang et al. 2022, eq. 2). Every tensor here is
[B, T] over response tokens with a 0/1 `mask` (1 = a sampled token, 0 = padding after the response ends);
padding never gets reward, value, advantage or loss.

- `kl_penalty_rewards`: -beta (log pi - log pi_ref) at every response token + the score at the last one;
- `whiten`: (x - mean) / std over the masked entries, population variance (unbiased=False);
- `gae`: generalised advantage estimation, backwards over the response (values past the end are 0);
- `policy_loss` / `value_loss`: PPO's clipped surrogate and clipped value loss, per token;
- `adaptive_kl_coef`: Ziegler et al.'s controller for beta.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .env import Distributed, all_reduce_


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, dist: Distributed | None = None) -> Tensor:
    """Normalise the masked entries to variance 1 (and mean 0 with shift_mean; else the mean is kept).

    The mean and the population variance are over every masked entry of every process, in float64 and in two
    passes (the mean, then the mean squared deviation from it: E[x^2] - mean^2 cancels catastrophically when the
    mean is large next to the spread). Padding entries come out as 0.
    """
    mask = mask.to(values.dtype)
    x, m = values.double(), mask.double()
    count_total = torch.stack([m.sum(), masked_sum(x, m)])
    if dist is not None:
        count_total = all_reduce_(count_total, dist)
    count, total = count_total.unbind()
    mean = total / count.clamp(min=1)
    squares = masked_sum((x - mean) ** 2, m)
    if dist is not None:
        squares = all_reduce_(squares, dist)
    var = squares / count.clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out.to(values.dtype) * mask


def last_token_index(mask: Tensor) -> Tensor:
    """Index [B] of each row's last response token (the EOS when the response has one); 0 for an empty row."""
    columns = torch.arange(mask.shape[1], device=mask.device)
    return (columns * mask.long()).argmax(dim=-1)


def kl_penalty_rewards(scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                       beta: float) -> tuple[Tensor, Tensor]:
    """Per-token rewards [B, T] = -beta (log pi - log pi_ref), plus each row's score [B] at its last token.

    Also returns the per-token KL estimate (log pi - log pi_ref, the k1 estimator) [B, T], 0 on padding.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask  # [B, T]
    rewards = -beta * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Advantages and returns [B, T]:  delta_t = r_t + gamma V_{t+1} - V_t,  A_t = delta_t + gamma lam A_{t+1},
    with V and A zero past each row's last token; returns = A + V."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, cliprange: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate per token: max(-A r, -A clip(r, 1 - eps, 1 + eps)), r = pi / pi_old.

    Returns (loss [B, T], clipped [B, T] bool: where the clipped branch was taken)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, cliprange_value: float) -> tuple[Tensor, Tensor]:
    """Clipped value loss per token: 0.5 max((V - R)^2, (clip(V, V_old -+ eps) - R)^2); and where clipping won."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), clipped_loss > unclipped_loss


def adaptive_kl_coef(beta: float, kl: float, *, target: float, n: int, horizon: int) -> float:
    """Ziegler et al. (2019): beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon), where KL is the
    batch's mean sequence KL and n the number of rollouts in the batch."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n / horizon)
