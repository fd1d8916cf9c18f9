"""AdamW's parameter groups, the learning-rate schedule, and the seeded, resumable order of records."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[str]]:
    """AdamW groups: decay on the 2-D projection weights; none on biases, LayerNorms or embeddings.

    Also returns the parameter names in optimizer order (for saving its state by name).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_embedding = f".{name}".endswith((".wte.weight", ".wpe.weight"))
        (decay if param.ndim == 2 and not is_embedding else no_decay).append((name, param))
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    return groups, [n for n, _ in decay] + [n for n, _ in no_decay]


def fused_adamw(device: torch.device) -> bool | None:
    """Whether AdamW runs its fused kernel on `device`: yes on CPU and CUDA (one kernel over every tensor; a
    gpt2-sized step on a 2-core CPU took 74 ms fused vs 374 ms in the per-tensor loop), else torch's default.
    The choice is a rule, not a timing, and a resumed run keeps the kernel saved with its state (the fused kernel
    rounds differently in the last bit)."""
    return True if device.type in ("cpu", "cuda") else None


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine from lr down to lr * min_ratio at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EpochSampler:
    """Record indices of a global batch: a seeded permutation per epoch, walked in order, by step number."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    def global_batch(self, step: int, size: int) -> list[int]:
        return [self.permutation(p // self.n)[p % self.n] for p in range(step * size, (step + 1) * size)]


def micro_batches(indices: list[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This process's share of a global batch, cut into micro-batches."""
    share = len(indices) // world
    mine = indices[rank * share: (rank + 1) * share]
    return [mine[i: i + micro] for i in range(0, len(mine), micro)]
