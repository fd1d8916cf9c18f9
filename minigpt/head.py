"""Log-probabilities of chosen tokens through the LM head, without ever holding the [N, V] logits.

Every training objective needs log p(target) at some positions: SFT and pretraining (cross entropy), DPO
(summed log-probs of responses), PPO (log-probs at the sampling temperature, and the entropy as a statistic).
Done plainly, N positions x GPT-2's 50,257 columns in fp32 is 200 kB a position: 800 MB for 8 x 512 tokens,
written, read by log_softmax, written again as its gradient; glibc hands such blocks back to the OS after each
use and faults them in again on the next (on a 2-core CPU that was most of a training step's time).

`token_logprobs` walks the rows in chunks of `CHUNK_BYTES` worth of logits: per chunk, logits = h W^T (in the
autocast dtype when autocast is on, like the plain path), their logsumexp, the target's log-prob, optionally the
entropy. Backward recomputes each chunk's logits from the saved logsumexp (one extra matmul) and forms
d logp_t / d z = onehot(t) - softmax(z), scaled by the incoming gradient and 1/temperature. Each row's numbers
depend only on that row (the chunking is a fixed size, not a measured one): results equal
`(h W^T / T).log_softmax(-1).gather(...)` within fp32 rounding, gradients included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import onednn_applies, onednn_linear

CHUNK_BYTES = 32 << 20  # fp32 logits per chunk: 167 rows of GPT-2's vocabulary


def chunk_rows(vocab_size: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab_size))


def matmul_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype a plain `h @ W.T` would compute in here: the autocast dtype when autocast is on, else `dtype`."""
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return dtype


def _onednn(kernel: str, *tensors: Tensor) -> bool:
    """Whether to run this chunk's products through oneDNN: asked for, and fp32 on a CPU (`minigpt.kernels`)."""
    return kernel == "onednn" and onednn_applies(*tensors)


def _logits(hidden: Tensor, weight: Tensor, temperature: float, kernel: str) -> Tensor:
    """Chunk logits [n, V] in fp32 from hidden [n, C] and weight [V, C] (both already in the matmul dtype)."""
    if _onednn(kernel, hidden, weight):
        logits = onednn_linear(hidden, weight)
    else:
        logits = (hidden @ weight.t()).float()
    return logits / temperature if temperature != 1.0 else logits


def _grad_hidden(grad_logits: Tensor, weight: Tensor, kernel: str) -> Tensor:
    """d loss / d hidden [n, C] = grad_logits [n, V] @ weight [V, C]."""
    if _onednn(kernel, grad_logits, weight):
        return onednn_linear(grad_logits, weight.t())
    return grad_logits @ weight


def accumulate_grad_weight(grad_w: Tensor | None, grad_logits: Tensor, hidden: Tensor) -> Tensor:
    """grad_w [V, C] (fp32) + grad_logits^T [V, n] @ hidden [n, C]: the first chunk's product (grad_w None) starts
    it, later ones add into it in place in fp32 (one GEMM that adds into grad_w: no [V, C] temporary per chunk,
    which cost as much as the product itself; no zero-filled [V, C] start either)."""
    if grad_logits.dtype == torch.float32 and hidden.dtype == torch.float32:
        if grad_w is None:
            return grad_logits.t() @ hidden
        return grad_w.addmm_(grad_logits.t(), hidden)
    product = (grad_logits.t() @ hidden).float()  # bf16 autocast: the product in bf16, as the plain path, summed in fp32
    return product if grad_w is None else grad_w.add_(product)


class _TokenLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, with_entropy: bool,
                kernel: str):
        dtype = matmul_dtype(hidden.device, hidden.dtype)
        h, w = hidden.to(dtype), weight.to(dtype)
        n = hidden.shape[0]
        step = chunk_rows(weight.shape[0])
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)  # [N]
        lse = torch.empty_like(logps)  # [N]
        entropy = torch.empty_like(logps) if with_entropy else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, step):
                z = _logits(h[s: s + step], w, temperature, kernel)  # [n, V]
                logp = z.log_softmax(-1)  # [n, V]
                logps[s: s + step] = logp.gather(1, targets[s: s + step, None])[:, 0]
                lse[s: s + step] = z[:, 0] - logp[:, 0]
                if with_entropy:  # H = -sum(p log p)
                    entropy[s: s + step] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.dtype, ctx.kernel = temperature, dtype, kernel
        ctx.mark_non_differentiable(*([entropy] if with_entropy else []))
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps: Tensor, grad_entropy: Tensor | None):
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, dtype, kernel = ctx.temperature, ctx.dtype, ctx.kernel
        h, w = hidden.to(dtype), weight.to(dtype)
        step = chunk_rows(weight.shape[0])
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = None  # [V, C] fp32, from the first chunk on
        g = grad_logps.float()
        for s in range(0, hidden.shape[0], step):
            z = _logits(h[s: s + step], w, temperature, kernel)  # [n, V]
            gz = z.sub_(lse[s: s + step, None]).exp_().mul_(-g[s: s + step, None])  # -g p
            rows = torch.arange(gz.shape[0], device=gz.device)
            gz[rows, targets[s: s + step]] += g[s: s + step]  # + g onehot
            if temperature != 1.0:
                gz /= temperature
            gz = gz.to(dtype)
            if grad_h is not None:
                grad_h[s: s + step] = _grad_hidden(gz, w, kernel).to(hidden.dtype)  # [n, C]
            if ctx.needs_input_grad[1]:
                grad_w = accumulate_grad_weight(grad_w, gz, h[s: s + step])  # [V, C]
        if ctx.needs_input_grad[1] and grad_w is None:  # no rows
            grad_w = torch.zeros_like(weight)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


class _SummedNLL(torch.autograd.Function):
    """-sum_rows log p(target): with the gradient formed in the same pass as the loss (the upstream gradient of a
    scalar is one number, so d loss / d z = p - onehot(t) is known in forward), three matmuls per chunk as the
    plain path, no recompute."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, kernel: str):
        dtype = matmul_dtype(hidden.device, hidden.dtype)
        h, w = hidden.to(dtype), weight.to(dtype)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = None  # [V, C] fp32, from the first chunk on
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        step = chunk_rows(weight.shape[0])
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], step):
                logp = _logits(h[s: s + step], w, 1.0, kernel).log_softmax(-1)  # [n, V]
                rows = torch.arange(logp.shape[0], device=logp.device)
                total -= logp[rows, targets[s: s + step]].sum(dtype=torch.float64)
                if want_h or want_w:
                    gz = logp.exp_()  # p, in place
                    gz[rows, targets[s: s + step]] -= 1.0  # p - onehot
                    gz = gz.to(dtype)
                    if want_h:
                        grad_h[s: s + step] = _grad_hidden(gz, w, kernel).to(hidden.dtype)  # [n, C]
                    if want_w:
                        grad_w = accumulate_grad_weight(grad_w, gz, h[s: s + step])  # [V, C]
        if want_w and grad_w is None:  # no rows
            grad_w = torch.zeros_like(weight)
        ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return total.float()

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        scale = grad_total.to(torch.float32)
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else grad_w * scale.to(grad_w.dtype), None, None)


def summed_nll(hidden: Tensor, weight: Tensor, targets: Tensor, *, kernel: str = "in_out") -> Tensor:
    """-sum of log softmax(h W^T)[target] over the rows: the summed next-token cross entropy, as a scalar; its
    gradient is formed during the forward pass (so call it where backward follows, or under no_grad)."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, C] and targets [N], got {list(hidden.shape)} and {list(targets.shape)}")
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        with torch.no_grad():
            return _SummedNLL.forward(_NoGrad(), hidden, weight, targets, kernel)
    return _SummedNLL.apply(hidden, weight, targets, kernel)


class _NoGrad:
    """Stands in for autograd's ctx when no gradient is wanted."""

    needs_input_grad = (False, False, False, False)
    grads = None


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, *, temperature: float = 1.0,
                   entropy: bool = False, kernel: str = "in_out") -> tuple[Tensor, Tensor | None]:
    """log softmax(h W^T / temperature)[target] per row [N] (differentiable in h and W), and with `entropy` the
    entropy of each row's distribution [N] (a statistic: no gradient). hidden [N, C], weight [V, C] (GPT-2's
    `wte.weight`), targets [N]."""
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, C] and targets [N], got {list(hidden.shape)} and {list(targets.shape)}")
    return _TokenLogProbs.apply(hidden, weight, targets, float(temperature), bool(entropy), kernel)
