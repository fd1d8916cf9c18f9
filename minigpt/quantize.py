"""int8 weight-only quantization for decoding: every projection and the LM head, per output channel, symmetric.

`quantize_(model)` replaces each `Conv1D` by an `Int8Linear` and gives the model an int8 copy of its tied output
matrix for the LM head; the embeddings, LayerNorms and biases stay as loaded, and activations stay in the
model's dtype. W[o, :] ≈ q[o, :] · scale[o] with q = round(W[o, :] / scale[o]) and scale[o] = max |W[o, :]| / 127:
a quarter of fp32's bytes per decode step (decoding reads every weight once per token).

Kernels, picked by measurement on this machine as `minigpt.kernels` does for float weights:
- few rows (decoding): `torch.ops.aten._weight_int8pack_mm` (int8 [out, in] x activations, scales fused), in the
  model's dtype or with the activations cast to bfloat16, whichever is faster here (on a 2-core AVX2 EPYC its
  fp32 path reads ~1.2 GB/s and its bf16 path 9-14 GB/s);
- many rows (a long prompt, scoring): dequantize the matrix once and run one `F.linear`, when that measured
  faster at that row count (a GEMM reads each weight once for many rows; the GEMV kernel does not amortise).
Devices without the int8 kernel always dequantize: correct, not fast.

A quantized model is for inference: it cannot be trained or saved in the hub layout (quantize at load instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import Conv1D, cache_missing_copies, seconds_per_call

QUANTIZE_CHOICES = ("int8",)
PROBE_ROWS = (32, 256)  # row counts at which the dequantize-then-GEMM path is timed against the int8 kernel
_MEASURED: dict[tuple, tuple] = {}  # (device, dtype, n_in, n_out) -> (compute dtype or None, gemm rows)


def quantize_per_channel(w_out_in: Tensor, rows_per_chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (q [out, in] int8, scale [out] float32) with w ≈ q * scale[:, None].

    Done a chunk of rows at a time, so the float temporaries stay small (the LM head has 50,257 rows)."""
    n_out, n_in = w_out_in.shape
    q = torch.empty(n_out, n_in, dtype=torch.int8, device=w_out_in.device)
    scale = torch.empty(n_out, dtype=torch.float32, device=w_out_in.device)
    for start in range(0, n_out, rows_per_chunk):
        w = w_out_in[start:start + rows_per_chunk].detach().float()  # [rows, in]
        s = (w.abs().amax(dim=1) / 127).clamp_(min=torch.finfo(torch.float32).tiny)  # an all-zero row: q = 0
        q[start:start + rows_per_chunk] = (w / s[:, None]).round_().clamp_(-127, 127)
        scale[start:start + rows_per_chunk] = s
    return q, scale


def int8_kernel_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `_weight_int8pack_mm` runs here for activations of `dtype` (it is missing on some builds/devices)."""
    try:
        x = torch.ones(1, 32, dtype=dtype, device=device)
        q = torch.ones(8, 32, dtype=torch.int8, device=device)
        torch.ops.aten._weight_int8pack_mm(x, q, torch.ones(8, dtype=dtype, device=device))
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


class Int8Linear(nn.Module):
    """y = x @ W + b with W [in, out] held as int8 [out, in] and one float scale per output channel."""

    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None, *, compute_dtype: torch.dtype | None,
                 gemm_rows: float = float("inf")) -> None:
        super().__init__()
        self.register_buffer("weight", q)  # [out, in] int8
        self.register_buffer("scale", scale)  # [out] float32
        self.register_buffer("bias", bias)  # [out] in the model's dtype, or None (the LM head)
        # compute_dtype None: no int8 kernel here, always dequantize. Otherwise the kernel's activation dtype.
        self.compute_dtype = compute_dtype
        kernel_scale = None if compute_dtype is None else scale.to(compute_dtype)  # the kernel takes it so
        self.register_buffer("kernel_scale", kernel_scale, persistent=False)
        self.gemm_rows = gemm_rows  # from this many rows on, dequantize and run one GEMM

    @classmethod
    def from_in_out(cls, w_in_out: Tensor, bias: Tensor | None) -> "Int8Linear":
        """Quantize a float [in, out] weight (any storage) with the kernels measured fastest for its shape."""
        q, scale = quantize_per_channel(w_in_out.t())
        compute_dtype, gemm_rows = fastest_int8_kernel(*w_in_out.shape, w_in_out.dtype, w_in_out.device)
        return cls(q, scale.to(w_in_out.device), None if bias is None else bias.detach().clone(),
                   compute_dtype=compute_dtype, gemm_rows=gemm_rows)

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        """The float weight the int8 values stand for, [out, in] in `dtype`."""
        return (self.weight.to(torch.float32) * self.scale[:, None]).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [M, in]
        if self.compute_dtype is None or rows.shape[0] >= self.gemm_rows:
            y = F.linear(rows, self.dequantized(x.dtype))  # [M, out]
        else:
            y = torch.ops.aten._weight_int8pack_mm(rows.to(self.compute_dtype).contiguous(), self.weight,
                                                   self.kernel_scale).to(x.dtype)  # [M, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1)  # [..., out]


def _time_int8(n_in: int, n_out: int, rows: int, compute_dtype: torch.dtype | None, dtype: torch.dtype,
               device: torch.device, give_up: float) -> float:
    """Seconds per product of `rows` activations with an int8 [n_in, n_out] weight (None: dequantize + GEMM).
    One row is timed cycling through copies that miss the caches (a GEMV reads the weight from memory); many
    rows on one copy (a GEMM's time is arithmetic)."""
    copies = cache_missing_copies(n_in * n_out) if rows == 1 else 1
    layers = [Int8Linear(torch.ones(n_out, n_in, dtype=torch.int8, device=device),
                         torch.full((n_out,), 0.01, device=device), None, compute_dtype=compute_dtype,
                         gemm_rows=float("inf") if compute_dtype is not None else 0)
              for _ in range(copies)]
    x = torch.full((rows, n_in), 0.5, dtype=dtype, device=device)
    return seconds_per_call([lambda layer=layer: layer(x) for layer in layers], give_up)


@torch.no_grad()
def fastest_int8_kernel(n_in: int, n_out: int, dtype: torch.dtype,
                        device: torch.device) -> tuple[torch.dtype | None, float]:
    """(activation dtype for the int8 kernel or None, rows from which dequantize + GEMM is faster), measured once
    per process for (device, dtype, shape)."""
    n_out = min(n_out, max(1, (16 << 20) // n_in))  # the LM head is timed on a slice: same kernel, less memory
    key = (device.type, dtype, n_in, n_out)
    if key not in _MEASURED:
        _MEASURED[key] = _measure_int8(n_in, n_out, dtype, device)
    return _MEASURED[key]


def _measure_int8(n_in: int, n_out: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.dtype | None, float]:
    candidates = [d for d in dict.fromkeys([dtype, torch.bfloat16]) if int8_kernel_available(device, d)]
    if not candidates:
        return None, 0
    if device.type != "cpu":
        return candidates[0], float("inf")  # GPUs: no timing at load (untested here)
    times: dict[torch.dtype, float] = {}
    for compute in candidates:
        best_so_far = min(times.values(), default=float("inf"))
        times[compute] = _time_int8(n_in, n_out, 1, compute, dtype, device, best_so_far)
    best = min(times, key=times.get)
    width = min(n_out, 3072)  # many rows: time on at most 3072 columns (both paths scale with the width)
    for rows in PROBE_ROWS:
        kernel = _time_int8(n_in, width, rows, best, dtype, device, float("inf"))
        if _time_int8(n_in, width, rows, None, dtype, device, kernel) < kernel:
            return best, rows
    return best, float("inf")


@torch.no_grad()
def quantize_(model: nn.Module, method: str = "int8") -> nn.Module:
    """Quantize a GPT's projections and LM head in place (one matrix at a time); returns the model."""
    if method not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={method!r}: the choices are {', '.join(QUANTIZE_CHOICES)}")
    if not hasattr(model, "int8_head"):  # the model with a tied LM head (`minigpt.model.Transformer`)
        raise TypeError(f"quantize_ expects a minigpt GPT, got {type(model).__name__}")
    if model.quantized:
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                setattr(parent, name, Int8Linear.from_in_out(child.weight, child.bias))
    model.int8_head = Int8Linear.from_in_out(model.wte.weight.t(), None)  # [C, V]; wte stays for the lookup
    for param in model.parameters():  # embeddings, LayerNorms: own copies, so the checkpoint's file map is let go
        param.data = param.data.clone()
    return model.requires_grad_(False)
