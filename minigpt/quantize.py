"""int8 weight-only quantization for decoding: every projection and the LM head, per output channel, symmetric.

`quantize_(model)` replaces each `Conv1D` by an `Int8Linear` and gives the model an int8 copy of its tied output
matrix for the LM head; the embeddings, LayerNorms and biases stay as loaded. A quarter of fp32's bytes per
decode step (decoding reads every weight once per token).

The scheme, "int8" (a fixed function: no timing decides any of it):
- weights: W[o, :] ≈ q[o, :] · scale[o], q = round(W[o, :] / scale[o]) clamped to ±127 (int8), scale[o] =
  max |W[o, :]| / 127 rounded to bfloat16 (the precision the product uses);
- each product: activations rounded to bfloat16, sum of activation × q in fp32, times scale, the result
  rounded to bfloat16, then to the model's dtype, plus the bias in the model's dtype.
bf16 activations are the scheme because they are the int8 kernel's fast path on CPUs (on a 2-core EPYC its
fp32-activation path reads 1.2-2.4 GB/s, its bf16 path 9-29 GB/s). It is computed by ATen's
`_weight_int8pack_mm` where that runs, and elsewhere as the same function through one fp32 GEMM on the int8
values. Each device runs one path for every row count, and every row is computed on its own, so a row's result
never depends on how many rows share the batch.

A quantized model is for inference: it cannot be trained or saved in the hub layout (quantize at load instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kernels import Conv1D

QUANTIZE_CHOICES = ("int8",)
COMPUTE_DTYPE = torch.bfloat16  # the scheme's activation and scale precision


def quantize_per_channel(w_out_in: Tensor, rows_per_chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (q [out, in] int8, scale [out] bfloat16) with w ≈ q * scale[:, None].

    Done a chunk of rows at a time, so the float temporaries stay small (the LM head has 50,257 rows)."""
    n_out, n_in = w_out_in.shape
    q = torch.empty(n_out, n_in, dtype=torch.int8, device=w_out_in.device)
    scale = torch.empty(n_out, dtype=COMPUTE_DTYPE, device=w_out_in.device)
    tiny = torch.finfo(COMPUTE_DTYPE).tiny
    for start in range(0, n_out, rows_per_chunk):
        w = w_out_in[start:start + rows_per_chunk].detach().float()  # [rows, in]
        s = (w.abs().amax(dim=1) / 127).clamp_(min=tiny).to(COMPUTE_DTYPE)  # an all-zero row: q = 0
        q[start:start + rows_per_chunk] = (w / s.float()[:, None]).round_().clamp_(-127, 127)
        scale[start:start + rows_per_chunk] = s
    return q, scale


def int8_kernel_available(device: torch.device) -> bool:
    """Whether `_weight_int8pack_mm` runs here for bfloat16 activations (it is missing on some builds/devices)."""
    try:
        x = torch.ones(1, 32, dtype=COMPUTE_DTYPE, device=device)
        q = torch.ones(8, 32, dtype=torch.int8, device=device)
        torch.ops.aten._weight_int8pack_mm(x, q, torch.ones(8, dtype=COMPUTE_DTYPE, device=device))
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def int8_product(x: Tensor, q: Tensor, scale: Tensor, *, kernel: bool) -> Tensor:
    """The scheme's product of rows x [M, in] with int8 q [out, in] and bf16 scale [out] -> [M, out] in bf16:
    ATen's kernel, or (`kernel=False`) the same function through an fp32 GEMM on the int8 values."""
    x = x.to(COMPUTE_DTYPE).contiguous()
    if kernel:
        return torch.ops.aten._weight_int8pack_mm(x, q, scale)
    return (F.linear(x.float(), q.float()) * scale.float()).to(COMPUTE_DTYPE)


class Int8Linear(nn.Module):
    """y = x @ W + b with W [in, out] held as int8 [out, in] and one bf16 scale per output channel."""

    def __init__(self, q: Tensor, scale: Tensor, bias: Tensor | None, *, kernel: bool) -> None:
        super().__init__()
        self.register_buffer("weight", q)  # [out, in] int8
        self.register_buffer("scale", scale)  # [out] bfloat16
        self.register_buffer("bias", bias)  # [out] in the model's dtype, or None (the LM head)
        self.kernel = kernel  # ATen's int8 kernel runs on this device (else the same function as one GEMM)

    @classmethod
    def from_in_out(cls, w_in_out: Tensor, bias: Tensor | None, *, kernel: bool | None = None) -> "Int8Linear":
        """Quantize a float [in, out] weight (any storage)."""
        q, scale = quantize_per_channel(w_in_out.t())
        if kernel is None:
            kernel = int8_kernel_available(w_in_out.device)
        return cls(q, scale, None if bias is None else bias.detach().clone(), kernel=kernel)

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        """The float weight the int8 values stand for, [out, in] in `dtype`."""
        return (self.weight.to(torch.float32) * self.scale.float()[:, None]).to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [M, in]
        y = int8_product(rows, self.weight, self.scale, kernel=self.kernel).to(x.dtype)  # [M, out]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1)  # [..., out]


@torch.no_grad()
def quantize_(model: nn.Module, method: str = "int8") -> nn.Module:
    """Quantize a GPT's projections and LM head in place (one matrix at a time); returns the model."""
    if method not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={method!r}: the choices are {', '.join(QUANTIZE_CHOICES)}")
    if not hasattr(model, "int8_head"):  # the model with a tied LM head (`minigpt.model.Transformer`)
        raise TypeError(f"quantize_ expects a minigpt GPT, got {type(model).__name__}")
    if model.quantized:
        return model
    kernel = int8_kernel_available(model.wte.weight.device)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                setattr(parent, name, Int8Linear.from_in_out(child.weight, child.bias, kernel=kernel))
    model.int8_head = Int8Linear.from_in_out(model.wte.weight.t(), None, kernel=kernel)  # [C, V]; wte: the lookup
    for param in model.parameters():  # embeddings, LayerNorms: own copies, so the checkpoint's file map is let go
        param.data = param.data.clone()
    return model.requires_grad_(False)
