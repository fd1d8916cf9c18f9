"""The compiled decode path: a static KV cache owned as buffers, and a `torch.compile`d decode step.

CUDA graphs need every tensor the step touches at a fixed address, so the cache lives in non-persistent
buffers of `StaticDecoder` (never in the state dict), sized in buckets of `CACHE_BUCKET` slots so a new prompt
length does not recompile. Prefill runs eagerly into the same buffers. On CUDA the compiled step (inductor's
fused kernels) is captured once per shape into a `torch.cuda.CUDAGraph` with static input and output tensors,
so each decode step is one graph replay: at batch 1 a step is hundreds of small kernels, and launching them
one by one costs more than reading the weights. On a CPU the compiled step is `Transformer.decode`, with
inductor's own loops for one-row products (see `StaticDecoder._step`), and only for one row: several rows
decode eagerly there (`StaticDecoder.serves`).

Threads: one generation at a time holds the static cache (a lock, claimed without waiting); any other, from
another thread or a second open stream, runs eagerly with a cache of its own, on the same read-only weights.
"""

from __future__ import annotations

import threading
import types
import warnings

import torch
from torch import Tensor, nn

from ..kernels import choose_one_row_loops_, own_code
from ..model import KVCache, Transformer

CACHE_BUCKET = 256


def bucketed_length(length: int, n_positions: int) -> int:
    return min(n_positions, -(-length // CACHE_BUCKET) * CACHE_BUCKET)


class StaticDecoder(nn.Module):
    """Owns a static KV cache for one (batch, length) shape and runs the compiled decode step over it."""

    def __init__(self, model: Transformer, mode: str | None = "reduce-overhead") -> None:
        super().__init__()
        self.model = model
        self.use_graph = mode == "reduce-overhead" and model.device.type == "cuda"
        self.shape: tuple[int, int] | None = None
        # Graphs are captured by hand (below), so inductor itself runs without its own cudagraphs. The step has a
        # code object of this decoder's own (`own_code`): decoders of other models never use up its recompile limit.
        self.step = torch.compile(types.MethodType(own_code(StaticDecoder._step), self),
                                  mode=None if self.use_graph else mode, fullgraph=True, dynamic=False)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[Tensor, ...] = ()
        self.static_logits: Tensor | None = None
        # One generation at a time holds the static cache; another running meanwhile (a second stream, another
        # thread) uses an eager cache. Claiming is a non-blocking lock, so two threads never both get it.
        self._holder = threading.Lock()
        self.warned = False  # the recompile limit's warning, given once

    @property
    def busy(self) -> bool:
        return self._holder.locked()

    def serves(self, rows: int) -> bool:
        """Whether a generation of `rows` rows decodes through this compiled step: any number on a GPU (CUDA
        graphs); one row on a CPU. On a CPU the compiled step gains through one-row products (inductor's loops);
        at several rows its products are oneDNN's either way, and attending over the static cache's 256-slot
        buckets reads more than the eager cache sized to the generation: 5 samples of a gpt2-shape model were
        8-15% slower compiled than eager on two 2-core EPYCs, so several rows decode eagerly."""
        return self.model.device.type != "cpu" or rows == 1

    def claim(self) -> bool:
        """Take the static cache for one generation; False when another generation holds it."""
        return self._holder.acquire(blocking=False)

    def give_back(self) -> None:
        self._holder.release()

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
            self.graph = None
        else:
            for i in range(config.n_layer):
                getattr(self, f"k{i}").zero_()
                getattr(self, f"v{i}").zero_()
        return self._cache()

    def _cache(self) -> KVCache:
        n = self.model.config.n_layer
        return KVCache([getattr(self, f"k{i}") for i in range(n)], [getattr(self, f"v{i}") for i in range(n)])

    def _step(self, tokens: Tensor, slot_valid: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        """tokens [B, 1] at slots [1] -> logits [B, V] of the next token.

        On a CPU the model's one-token step (`Transformer.decode`), where inductor writes a one-row product as
        its own loop where that was measured faster on this machine (`kernels.choose_one_row_loops_`, at
        `compile_decode`) and calls oneDNN (bias and residual fused) otherwise: a gpt2 step 1.3x faster than
        eager on a 2-core AVX-512 EPYC (compiling `forward` gained 2%; docs/performance.md). CUDA graphs keep
        capturing `forward`, the step measured on a GPU."""
        if not self.use_graph and tokens.device.type == "cpu":
            return self.model.decode(tokens[:, 0], positions[:, 0], self._cache(), slots, slot_valid)
        logits = self.model(tokens, slot_valid, position_ids=positions, cache=self._cache(), cache_slots=slots,
                            last_only=True)
        return logits[:, -1]

    def forward(self, tokens: Tensor, slot_valid: Tensor, positions: Tensor, slots: Tensor) -> Tensor:
        if not self.use_graph:
            try:
                return self.step(tokens, slot_valid, positions, slots)
            except torch._dynamo.exc.FailOnRecompileLimitHit:  # a 9th (batch, cache length) shape: run it eagerly
                if not self.warned:
                    warnings.warn("compiled decoding: dynamo's recompile limit reached for this model; new batch "
                                  "sizes and cache lengths decode eagerly (raise torch._dynamo.config."
                                  "recompile_limit to compile more)", RuntimeWarning, stacklevel=2)
                    self.warned = True
                return self._step(tokens, slot_valid, positions, slots)
        if self.graph is None:
            self._capture(tokens, slot_valid, positions, slots)
        for static, value in zip(self.static_inputs, (tokens, slot_valid, positions, slots)):
            static.copy_(value)
        self.graph.replay()
        return self.static_logits.clone()  # the next replay overwrites the static output

    def _capture(self, tokens: Tensor, slot_valid: Tensor, positions: Tensor, slots: Tensor) -> None:
        """Record one decode step into a CUDA graph. Warm-up runs compile first; they write the cache at
        `slots` exactly as the real step will, and the replay that follows writes the same values again."""
        self.static_inputs = tuple(t.clone() for t in (tokens, slot_valid, positions, slots))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.step(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self.step(*self.static_inputs)


def compile_decode(model: Transformer, mode: str | None = "reduce-overhead") -> Transformer:
    """Make `model.generate` decode through a compiled static-cache step (first call compiles: slow)."""
    decoder = StaticDecoder(model, mode)
    if not decoder.use_graph:  # a CPU: which one-row products compile faster as inductor's loops, measured
        choose_one_row_loops_(model)
    # Set outside nn.Module's registry: the decoder holds the model, not the other way round.
    object.__setattr__(model, "_static_decoder", decoder)
    return model
