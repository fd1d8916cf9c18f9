"""Matrix products for GPT-2's weights, with the layout and kernel picked by measurement on this machine.

A projection weight is always seen as HuggingFace's [in, out] (`Conv1D.weight`, `lm_head` = `wte.weight.t()`),
but its storage may be either layout: [in, out] contiguous (GPT-2's own) or [out, in] contiguous with the
[in, out] parameter being its transposed view. `matmul_in_out(x, w, kernel)` dispatches on the storage and the
kernel, so the result is right whatever the layout; only the speed differs, and by a lot from one CPU to the next:
on a 2-core AVX2 EPYC a bf16 `x @ W[in, out]` GEMV reads 0.7-1 GB/s while `F.linear(x, W[out, in])` reads
10-19 GB/s; on a 2-core AVX-512 EPYC, fp32 products through oneDNN (which detects AVX-512 on any vendor's CPU) run
1.3-3x faster than ATen's fp32 path (MKL) for 1-16 rows, the LM head at 5 rows 11 ms instead of 30.

`choose_layouts_(model)` times the candidates once per machine and (device, dtype, shape) on matrices of the
model's shapes, for one row (batch-1 decoding) plus eight (sampling, beams, batches), cycling through more bytes
than the caches hold (decoding reads every weight from memory), re-lays each weight out in place (one matrix at a
time: never a second copy of the model) and records the kernel on the module. The candidates compute the same
function up to fp32 reduction order, and the choices are stored per machine (`minigpt.machine`): every later process reuses them without timing, so the same machine
gives the same numbers run after run, whatever its load.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .machine import ChoiceStore, machine_id

KERNELS = ("in_out", "in_out_split", "out_in", "onednn")
OUT_IN_KERNELS = ("out_in", "onednn")  # the kernels that read an [out, in] storage
TIMED_ROWS = (1, 8)  # a kernel's score: seconds for a 1-row product plus an 8-row one
Timer = Callable[[str, int, int, torch.dtype, torch.device, float], float]  # kernel, n_in, n_out, ... -> seconds
CYCLE_BYTES = 24 << 20  # more than a CPU's last-level cache, so the timing sees memory, as decoding does


def stored_out_in(w: Tensor) -> bool:
    """Whether the [in, out] weight `w` is the transposed view of a contiguous [out, in] matrix."""
    return w.dim() == 2 and not w.is_contiguous() and w.t().is_contiguous()


def onednn_available() -> bool:
    """Whether this torch has oneDNN's fp32 linear (`mkldnn::_linear_pointwise`, what inductor's CPU path calls)."""
    return torch._C._has_mkldnn and hasattr(torch.ops.mkldnn, "_linear_pointwise")  # (traceable by torch.compile)


def matmul_in_out(x: Tensor, w: Tensor, kernel: str = "in_out", *, loops: bool = False) -> Tensor:
    """x [..., in] @ w [in, out] -> [..., out], by w's storage and the `kernel` measured fastest for it.

    [out, in] storage: `F.linear`, or with "onednn" (float32 CPU) oneDNN's linear. [in, out] storage: `x @ w`,
    or with "in_out_split" (float32 CPU) w's columns cut in two strided halves run as one `bmm`, which keeps both
    cores of a small CPU busy. All agree up to fp32 rounding. Under torch.compile on a CPU (and for oneDNN when
    a gradient is wanted) the product is one opaque op with a registered backward (`minigpt::matmul_in_out`):
    inductor would otherwise write its own matrix-vector loops, measured 2-3x slower than these kernels, and fuse
    the LayerNorm before them into the inner loop. The exception, `loops` (measured per machine by
    `choose_one_row_loops_`): a one-row fp32 product in a compiled decode step as inductor's loops."""
    if compiled_loops(x, w, loops):
        return rowdot_in_out(x, w)
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
    if x.device.type == "cpu" and torch.compiler.is_compiling() and not wants_grad:  # a compiled decode step
        return torch.ops.minigpt.product(x, w, kernel)  # the cheaper op, no backward
    if x.device.type == "cpu" and (torch.compiler.is_compiling() or (
            kernel == "onednn" and wants_grad and onednn_applies(x, w))):
        return torch.ops.minigpt.matmul_in_out(x, w, kernel)
    return _matmul_in_out(x, w, kernel)


def own_code(fn: Callable) -> Callable:
    """A copy of function `fn` with a code object of its own. Dynamo counts its recompile limit (8 shapes) per
    code object, so what compiles such a copy never uses up the limit of another compiled copy of `fn`."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__)


def compiled_loops(x: Tensor, w: Tensor, loops: bool) -> bool:
    """Whether this product is written as inductor's loops (`rowdot_in_out`): asked for (`loops`), inside a
    compiled CPU step that wants no gradient, one fp32 row."""
    return loops and x.device.type == "cpu" and torch.compiler.is_compiling() and one_row_fp32(x, w) \
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))


def one_row_fp32(x: Tensor, w: Tensor) -> bool:
    """Whether x [..., in] is one row and both are fp32: a batch-1 decoding step's product."""
    return x.numel() == x.shape[-1] and x.dtype == w.dtype == torch.float32


def rowdot_in_out(x: Tensor, w: Tensor) -> Tensor:
    """x [..., in] (one row) @ w [in, out] -> [..., out] written as a reduction, for inductor to compile.

    Under torch.compile on a CPU, a one-row product becomes inductor's own loop over w's rows, each a vectorised
    dot product with x, the bias and residual additions fused into it. On a 2-core AVX-512 EPYC it reads 20-24
    GB/s where oneDNN's matrix-vector product reads 18-22 (the 154 MB LM head 6.0 ms instead of 6.9); held to
    AVX2, the same CPU's compiled step was 1.35x slower than eager. So it is a measured choice per machine and
    shape (`choose_one_row_loops_`), and only for one row: at five rows inductor's loops read 1.8x slower than
    oneDNN. The fp32 sums run in another order than oneDNN's (logits agree to ~1e-6; eager oneDNN at one row and
    at five differ as much)."""
    # x as a buffer of its own: left to itself inductor recomputes x's producer (a LayerNorm, a tanh GELU) inside
    # the loop, once per row of w: held to AVX2, a gpt2 step was 42.5 ms instead of 30.7 (AVX-512: 23.9 vs 23.2).
    x = torch.ops.minigpt.realize(x)
    y = (w.t() * x.reshape(1, -1)).sum(-1)  # [out, in] * [1, in] -> [out]
    return y.reshape(*x.shape[:-1], -1)  # [..., out]


def onednn_applies(*tensors: Tensor) -> bool:
    """Whether oneDNN's fp32 linear can multiply these: fp32 CPU tensors, no autocast (under bf16 autocast the
    plain product autocasts, as everywhere else), and a torch with oneDNN."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) \
        and not torch.is_autocast_enabled("cpu") and onednn_available()


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x [..., K] @ weight [N, K]^T [+ bias [N]] -> [..., N] through oneDNN's fp32 linear (check `onednn_applies`
    first); the bias is added to the fp32 product inside it, the same bits as adding it after.

    Under torch.compile it goes through the opaque `minigpt::matmul_in_out`: inductor lowers oneDNN's linear only
    for weights it has frozen into constants, and fails on a parameter (a compiled training step, the chunked head)."""
    if torch.compiler.is_compiling():
        y = torch.ops.minigpt.matmul_in_out(x, weight.t(), "onednn")
        return y if bias is None else y + bias
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear_in_out(x: Tensor, w: Tensor, bias: Tensor, kernel: str, residual: Tensor | None = None, *,
                  loops: bool = False) -> Tensor:
    """[residual +] x [..., in] @ w [in, out] + bias [out] -> [..., out]: `matmul_in_out` and the additions.

    With "onednn" and no gradient wanted (decoding, scoring, rollouts) the additions are fused into oneDNN's
    product: it adds them to the product's fp32 result as the separate additions would, so the bits are the same
    (tests/test_kernels.py), with one op instead of three. `loops`: as `matmul_in_out`'s (inductor fuses the
    additions into its loops)."""
    if kernel == "onednn" and not torch.is_grad_enabled() and not compiled_loops(x, w, loops) \
            and onednn_applies(x, w, bias, *(() if residual is None else (residual,))):
        if torch.compiler.is_compiling():  # one opaque op for inductor (it cannot lower oneDNN's on a parameter)
            return torch.ops.minigpt.fused_onednn_linear(x, w.t(), bias, residual)
        return _fused_onednn_linear(x, w.t(), bias, residual)
    y = matmul_in_out(x, w, kernel, loops=loops) + bias
    return y if residual is None else residual + y


def _fused_onednn_linear(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None) -> Tensor:
    """[residual +] x [..., K] @ weight [N, K]^T + bias [N], the additions inside oneDNN's product (no autograd)."""
    if residual is None:
        return onednn_linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


# The ops a compiled decode step calls, opaque to inductor and without a backward: `matmul_in_out` (`product`),
# `linear_in_out`'s oneDNN product with its additions inside (`fused_onednn_linear`) and a copy (`realize`).
# Defined with the plain operator library, not `custom_op`: a call costs about half as much (18 us instead of
# 27 on a 2-core EPYC under the profiler; 49 calls a gpt2 step).
_LIBRARY = torch.library.Library("minigpt", "FRAGMENT")
_LIBRARY.define("product(Tensor x, Tensor w, str kernel) -> Tensor")
_LIBRARY.define("fused_onednn_linear(Tensor x, Tensor weight, Tensor bias, Tensor? residual) -> Tensor")
_LIBRARY.impl("fused_onednn_linear", _fused_onednn_linear, "CPU")
_LIBRARY.define("realize(Tensor x) -> Tensor")  # a copy inductor cannot fuse into what reads it (rowdot_in_out)
_LIBRARY.impl("realize", torch.clone, "CPU")


@torch.library.register_fake("minigpt::realize", lib=_LIBRARY)
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


@torch.library.register_fake("minigpt::product", lib=_LIBRARY)
def _(x: Tensor, w: Tensor, kernel: str) -> Tensor:
    return x.new_empty(*x.shape[:-1], w.shape[1])


@torch.library.register_fake("minigpt::fused_onednn_linear", lib=_LIBRARY)
def _(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor | None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("minigpt::matmul_in_out", mutates_args=())
def _opaque_matmul_in_out(x: Tensor, w: Tensor, kernel: str) -> Tensor:
    return _matmul_in_out(x, w, kernel)


@_opaque_matmul_in_out.register_fake
def _(x: Tensor, w: Tensor, kernel: str) -> Tensor:
    return x.new_empty(*x.shape[:-1], w.shape[1])


def _matmul_setup_context(ctx, inputs, output) -> None:
    x, w, kernel = inputs
    ctx.save_for_backward(x, w)
    ctx.kernel = kernel


def _matmul_backward(ctx, grad: Tensor):
    """y = x @ w: dx = dy @ w^T [..., in], dw = x^T dy summed over the leading dims [in, out] (a compiled training
    step needs these: inductor treats the op as opaque)."""
    x, w = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:  # dy [..., out] @ w^T [out, in]: a product by w's [out, in] view, as forward's
        grad_x = _matmul_in_out(grad, w.t(), ctx.kernel if ctx.kernel == "onednn" else "in_out")
    grad_w = None
    if ctx.needs_input_grad[1]:  # x^T [in, M] @ dy [M, out]; oneDNN as a linear of x^T by dy^T's [out, M] view
        rows_x, rows_dy = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])  # [M, in], [M, out]
        if ctx.kernel == "onednn" and onednn_applies(rows_x, rows_dy):
            grad_w = onednn_linear(rows_x.t(), rows_dy.t())
        else:
            grad_w = rows_x.t() @ rows_dy
    return grad_x, grad_w, None


_opaque_matmul_in_out.register_autograd(_matmul_backward, setup_context=_matmul_setup_context)


def _matmul_in_out(x: Tensor, w: Tensor, kernel: str) -> Tensor:
    if kernel == "onednn" and onednn_applies(x, w):  # either storage ([out, in] reads fastest)
        return onednn_linear(x, w.t())  # [..., out]
    if stored_out_in(w):
        return F.linear(x, w.t())
    n_in, n_out = w.shape
    if kernel != "in_out_split" or x.device.type != "cpu" or w.dtype != torch.float32 or n_out < 2:
        return x @ w
    lead = x.shape[:-1]
    rows = x.reshape(1, -1, n_in)  # [1, M, in]
    half = n_out // 2
    halves = w[:, : 2 * half].unflatten(1, (2, half)).transpose(0, 1)  # [2, in, out/2], views of w
    y = torch.bmm(rows.expand(2, -1, -1), halves).transpose(0, 1).reshape(*lead, 2 * half)  # [..., 2*half]
    if n_out % 2:  # an odd last column (the 50257-token LM head)
        y = torch.cat([y, x @ w[:, 2 * half:]], dim=-1)
    return y


_LIBRARY.impl("product", _matmul_in_out, "CPU")


def init_normal_(weight: Tensor, std: float) -> None:
    """Random normal init, skipped on the meta device (a model built there to receive a checkpoint)."""
    if not weight.is_meta:
        nn.init.normal_(weight, std=std)


class Conv1D(nn.Module):
    """y = x @ weight + bias with weight stored [in, out], the layout GPT-2 checkpoints use (no transposes)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))  # [in, out]; its storage may be [out, in] (kernels)
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.kernel = "in_out_split"  # how `weight` is multiplied (`KERNELS`); `choose_layouts_` may measure another
        self.one_row_loops = False  # a compiled one-row product as inductor's loops (`choose_one_row_loops_`)
        init_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """x @ weight + bias [..., out], plus `residual` when given (fused where the kernel can)."""
        return linear_in_out(x, self.weight, self.bias, self.kernel, residual, loops=self.one_row_loops)


def relayout(w: Tensor, kernel: str) -> Tensor:
    """`w` ([in, out]) with the storage `kernel` reads fastest: the same values, one temporary copy."""
    want_out_in = kernel in OUT_IN_KERNELS
    if want_out_in == stored_out_in(w):
        return w
    if want_out_in:
        return w.t().contiguous().t()
    return w.contiguous()


def seconds_per_call(calls: list[Callable[[], object]], give_up: float = float("inf")) -> float:
    """Wall time per call, cycling through `calls` (one per weight copy, so the caches are missed);
    inf as soon as it is clearly slower than `give_up` seconds per call (a cliff is not timed for long)."""
    calls[0]()  # warm-up (first-call dispatch, packing)
    runs, start = 0, time.perf_counter()
    while True:
        for call in calls:
            call()
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed > 3 * give_up * runs and runs >= 2:
                return float("inf")
        if elapsed > 0.005 and runs >= 2 * len(calls):
            return elapsed / runs


def cache_missing_copies(bytes_per_copy: int) -> int:
    """How many copies of a matrix to cycle through so that their bytes exceed the caches (at most 16)."""
    return max(1, min(16, CYCLE_BYTES // max(1, bytes_per_copy)))


def _time_kernel(kernel: str, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device,
                 give_up: float) -> float:
    """Seconds for a product of one row plus one of eight rows (`TIMED_ROWS`: a batch-1 decoding step's and a
    sampling / beam / batch step's) with `kernel` on [n_in, n_out] weights of `dtype`; inf if it fails here."""
    copies = cache_missing_copies(n_in * n_out * torch.finfo(dtype).bits // 8)
    mats = [relayout(torch.full((n_in, n_out), 0.01, dtype=dtype, device=device), kernel) for _ in range(copies)]
    total = 0.0
    for rows in TIMED_ROWS:
        x = torch.full((1, rows, n_in), 0.5, dtype=dtype, device=device)
        try:
            total += seconds_per_call([lambda w=w: matmul_in_out(x, w, kernel) for w in mats], give_up - total)
        except RuntimeError:  # a kernel this build or CPU cannot run
            return float("inf")
        if total == float("inf"):
            break
    return total


def _fastest(candidates, timer: Timer, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device, *,
             default: str) -> str:
    """The candidate `timer` measures fastest (each timed against the best so far, so a slow one gives up early);
    `default` when none runs."""
    best, best_time = default, float("inf")
    for kernel in candidates:
        seconds = timer(kernel, n_in, n_out, dtype, device, best_time)
        if seconds < best_time:
            best, best_time = kernel, seconds
    return best


def fastest_kernel(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device, *, store: ChoiceStore,
                   remeasure: bool = False, timer: Timer = _time_kernel, machine: str | None = None) -> str:
    """The kernel that multiplies a vector by an [n_in, n_out] weight fastest on this machine: stored in `store`
    after its first measurement, and from then on read from there (`remeasure` times it again)."""
    if device.type != "cpu":
        return "in_out"  # GPUs: one cuBLAS call either way; nothing to gain from timing at load
    # A wide matrix (the LM head) is timed whole, once: on a slice of it (8192 columns) the split product won on
    # CPU C, while for the whole head at 5-8 rows it took 14 ms to oneDNN's 8-9 (tie at one row).
    candidates = ["out_in", "in_out"]
    if dtype == torch.float32:
        candidates += ["in_out_split", "onednn"] if onednn_available() else ["in_out_split"]

    def measure() -> str:
        return _fastest(candidates, timer, n_in, n_out, dtype, device, default="in_out")

    key = f"kernel {str(dtype).removeprefix('torch.')} {n_in}x{n_out}"  # (before oneDNN: "layout ...", 1 row)
    return store.choose(machine or machine_id(device), key, measure, valid=tuple(candidates), remeasure=remeasure)


@torch.no_grad()
def choose_layouts_(model: nn.Module, *, store: ChoiceStore | None = None, remeasure: bool = False,
                    timer: Timer = _time_kernel) -> dict[str, str]:
    """Give every `Conv1D` of a model (and its tied LM head) the fastest layout measured on this machine (stored
    in `store`, by default this machine's choices file), in place.

    Returns {parameter name: kernel}. Parameter names, shapes and values do not change."""
    store = store if store is not None else ChoiceStore()
    device = next(model.parameters()).device
    pick = dict(store=store, remeasure=remeasure, timer=timer, machine=machine_id(device))  # read /proc once
    chosen: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            w = module.weight
            kernel = fastest_kernel(*w.shape, w.dtype, w.device, **pick)
            module.weight = nn.Parameter(relayout(w.data, kernel), requires_grad=w.requires_grad)
            module.kernel = kernel
            chosen[f"{name}.weight"] = kernel
        elif hasattr(module, "head_kernel"):  # the model itself: its LM head is the tied `wte` read as [C, V]
            head = module.wte.weight.t()  # [C, V]
            kernel = fastest_kernel(*head.shape, head.dtype, head.device, **pick)
            module.wte.weight = nn.Parameter(relayout(head.data, kernel).t(), requires_grad=module.wte.weight.requires_grad)
            module.head_kernel = kernel
            chosen[f"{name + '.' if name else ''}wte.weight"] = kernel
    return chosen


ONE_ROW_CHOICES = ("loops", "kernel")  # a compiled one-row product: inductor's loops, or the measured kernel's op
OneRowTimer = Callable[[str, int, int, str, float], float]  # choice, n_in, n_out, kernel, give_up -> seconds


def _one_row_product(x: Tensor, w: Tensor, kernel: str, loops: bool) -> Tensor:
    return matmul_in_out(x, w, kernel, loops=loops)


def _time_one_row(choice: str, n_in: int, n_out: int, kernel: str, give_up: float) -> float:
    """Seconds for a compiled one-row fp32 product by an [n_in, n_out] weight stored for `kernel`: inductor's
    loops ("loops") or `kernel`'s op ("kernel"), the weights cycled past the caches."""
    copies = cache_missing_copies(n_in * n_out * 4)
    mats = [relayout(torch.full((n_in, n_out), 0.01), kernel) for _ in range(copies)]
    x = torch.full((1, 1, n_in), 0.5)
    compiled = torch.compile(own_code(_one_row_product), dynamic=False, fullgraph=True)  # (recompile limit)
    loops = choice == "loops"
    try:
        with torch.no_grad():
            return seconds_per_call([lambda w=w: compiled(x, w, kernel, loops) for w in mats], give_up)
    except Exception:  # noqa: BLE001 - inductor failing here (no C++ compiler, a bug) means: not this choice
        return float("inf")


def choose_one_row_loops_(model: nn.Module, *, store: ChoiceStore | None = None, remeasure: bool = False,
                          timer: OneRowTimer = _time_one_row) -> dict[str, bool]:
    """For a compiled decode step on a CPU: whether each fp32 projection (and the LM head) of `model` multiplies
    one row faster as inductor's own loops (`rowdot_in_out`) than by its measured kernel. Timed once per machine,
    shape and kernel (compiling each: seconds), stored like the kernels; sets `one_row_loops` /
    `head_one_row_loops` in place. Returns {parameter name: loops?}; {} off a CPU or in another dtype."""
    store = store if store is not None else ChoiceStore()
    device = next(model.parameters()).device
    chosen: dict[str, bool] = {}
    if device.type != "cpu":
        return chosen
    machine = machine_id(device)

    def loops(w: Tensor, kernel: str) -> bool:
        n_in, n_out = w.shape
        key = f"compiled one-row {kernel} float32 {n_in}x{n_out}"

        def measure() -> str:
            def timed(choice: str, _n_in: int, _n_out: int, _dtype, _device, give_up: float) -> float:
                return timer(choice, n_in, n_out, kernel, give_up)

            return _fastest(ONE_ROW_CHOICES, timed, n_in, n_out, torch.float32, device, default="kernel")

        return store.choose(machine, key, measure, valid=ONE_ROW_CHOICES, remeasure=remeasure) == "loops"

    for name, module in model.named_modules():
        if isinstance(module, Conv1D) and module.weight.dtype == torch.float32:
            module.one_row_loops = chosen[f"{name}.weight"] = loops(module.weight, module.kernel)
        elif hasattr(module, "head_kernel") and module.wte.weight.dtype == torch.float32 \
                and getattr(module, "int8_head", None) is None:
            module.head_one_row_loops = loops(module.wte.weight.t(), module.head_kernel)
            chosen[f"{name + '.' if name else ''}wte.weight"] = module.head_one_row_loops
    return chosen


TRAINING_KERNELS = ("in_out_split", "onednn")
TRAINING_ROWS = 512  # a training micro-batch's rows, for timing


def _time_training_kernel(kernel: str, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device,
                          give_up: float) -> float:
    """Seconds for the forward and backward products of an [n_in, n_out] projection over TRAINING_ROWS rows."""
    w = torch.full((n_in, n_out), 0.01, dtype=dtype, device=device, requires_grad=True)
    x = torch.full((TRAINING_ROWS, n_in), 0.5, dtype=dtype, device=device, requires_grad=True)
    grad = torch.full((TRAINING_ROWS, n_out), 0.25, dtype=dtype, device=device)

    def step() -> None:
        matmul_in_out(x, w, kernel).backward(grad)
        x.grad = w.grad = None

    try:
        return seconds_per_call([step], give_up)
    except RuntimeError:  # a kernel this build or CPU cannot run
        return float("inf")


def training_kernel(n_embd: int, dtype: torch.dtype, device: torch.device, *, store: ChoiceStore | None = None,
                    remeasure: bool = False, timer: Timer = _time_training_kernel) -> str:
    """The kernel a training run multiplies with (`TRAINING_KERNELS`): timed once per machine on the forward and
    backward products of an MLP projection ([n_embd, 4 n_embd], TRAINING_ROWS rows) and stored, like the layouts.
    Training keeps the checkpoint's [in, out] storage; only the kernel that reads it changes (the run saves its
    kernel, so a resumed run multiplies as the first did). GPUs and non-fp32 weights: the plain product."""
    if device.type != "cpu" or dtype != torch.float32 or not onednn_available():
        return "in_out_split"
    store = store if store is not None else ChoiceStore()
    n_in, n_out = n_embd, 4 * n_embd

    def measure() -> str:
        return _fastest(TRAINING_KERNELS, timer, n_in, n_out, dtype, device, default=TRAINING_KERNELS[0])

    key = f"training {str(dtype).removeprefix('torch.')} {n_in}x{n_out} rows {TRAINING_ROWS}"
    return store.choose(machine_id(device), key, measure, valid=TRAINING_KERNELS, remeasure=remeasure)


def use_kernel_(model: nn.Module, kernel: str) -> None:
    """Multiply every projection of `model` (and its tied LM head, in the chunked training head too) by `kernel`,
    whatever their storage (a training run's choice; `choose_layouts_` picks per weight for decoding)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: one of {', '.join(KERNELS)}")
    for module in model.modules():
        if isinstance(module, Conv1D):
            module.kernel = kernel
        elif hasattr(module, "head_kernel"):
            module.head_kernel = kernel
