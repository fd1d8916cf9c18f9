"""The compiled decode path (for GPUs): a static KV cache owned as buffers, and a `torch.compile`d decode step.

CUDA graphs need every tensor the step touches at a fixed address, so the cache lives in non-persistent
buffers of `StaticDecoder` (never in the state dict), sized in buckets of `CACHE_BUCKET` slots so a new prompt
length does not recompile. Prefill runs eagerly into the same buffers; each decode step is one graph replay.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .model import GPT, KVCache

CACHE_BUCKET = 256


def bucketed_length(length: int, n_positions: int) -> int:
    return min(n_positions, -(-length // CACHE_BUCKET) * CACHE_BUCKET)


class StaticDecoder(nn.Module):
    """Owns a static KV cache for one (batch, length) shape and runs the compiled decode step over it."""

    def __init__(self, model: GPT, mode: str | None = "reduce-overhead") -> None:
        super().__init__()
        self.model = model
        self.mode = mode
        self.shape: tuple[int, int] | None = None
        self.step = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False)

    def cache_for(self, batch_size: int, length: int) -> KVCache:
        """A zeroed cache of at least `length` slots whose tensors are this module's buffers."""
        config = self.model.config
        length = bucketed_length(length, config.n_positions)
        if self.shape != (batch_size, length):
            shape = (batch_size, config.n_head, length, config.head_dim)
            for i in range(config.n_layer):
                kwargs = dict(device=self.model.device, dtype=self.model.dtype)
                self.register_buffer(f"k{i}", torch.zeros(shape, **kwargs), persistent=False)
                self.register_buffer(f"v{i}", torch.zeros(shape, **kwargs), persistent=False)
            self.shape = (batch_size, length)
        else:
            for i in range(config.n_layer):
                getattr(self, f"k{i}").zero_()
                getattr(self, f"v{i}").zero_()
        return self._cache()

    def _cache(self) -> KVCache:
        n = self.model.config.n_layer
        return KVCache([getattr(self, f"k{i}") for i in range(n)], [getattr(self, f"v{i}") for i in range(n)])

    def _step(self, tokens: Tensor, slot_valid: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        """tokens [B, 1] at slots [1] -> logits [B, V] of the next token."""
        logits = self.model(tokens, slot_valid, position_ids=positions, cache=self._cache(), cache_slots=slots,
                            last_only=True)
        return logits[:, -1]

    def forward(self, tokens: Tensor, slot_valid: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        # .clone(): a CUDA-graph output is overwritten by the next replay
        return self.step(tokens, slot_valid, positions, slots).clone()


def compile_decode(model: GPT, mode: str | None = "reduce-overhead") -> GPT:
    """Make `model.generate` decode through a compiled static-cache step (first call compiles: slow)."""
    # Set outside nn.Module's registry: the decoder holds the model, not the other way round.
    object.__setattr__(model, "_static_decoder", StaticDecoder(model, mode))
    return model
