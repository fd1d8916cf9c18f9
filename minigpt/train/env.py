"""Run plumbing shared by every trainer: processes (torchrun / DDP), the device, and stopping on Ctrl-C."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import TrainingError


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save a resumable checkpoint, stop.

    Alone, a second Ctrl-C aborts at once (KeyboardInterrupt) without saving. Under torchrun a second signal is
    ignored: torchrun forwards the terminal's Ctrl-C to each worker, and a worker that shares the terminal's
    process group (older torch versions) would count it twice; torchrun's kill timeout is the hard stop there.
    """

    def __init__(self, notify: Callable[[str], None], *, abort_on_second: bool = True) -> None:
        self.requested = False
        self.notify = notify
        self.abort_on_second = abort_on_second
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.abort_on_second and signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        again = "Ctrl-C again aborts without saving" if self.abort_on_second else "please wait"
        self.notify(f"stopping after this step and saving a resumable checkpoint ({again})")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


KEEP_FREED_BYTES = 1 << 30  # freed blocks up to this size stay mapped for reuse (`keep_freed_memory`)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(keep_bytes: int = KEEP_FREED_BYTES) -> bool:
    """Have glibc's malloc keep freed blocks of up to `keep_bytes` for reuse instead of returning them to the OS.

    A training step allocates and frees blocks of hundreds of MB (GPT-2's [50257, 768] gradients, the LM head's
    chunks); by default glibc maps every block over 32 MB afresh and unmaps it on free, so each step the kernel
    zeroes and faults those pages in again (measured: ~35 ms per 154 MB block, ~8% of a gpt2 CPU step). This is
    what `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` do, set for the process from inside it (a user who
    set either variable keeps theirs). Returns whether it took effect: False off Linux or without glibc."""
    if sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(keep_bytes, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, keep)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun set up (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_(values: Tensor, dist_info: Distributed, op: str = "sum") -> Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return values


def barrier(dist_info: Distributed) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def close_distributed(dist_info: Distributed) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def pick_device(name: str, dist_info: Distributed | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("device cuda asked for, but CUDA is not available on this machine (use cpu)")
        if name == "cuda" and dist_info is not None and dist_info.world > 1:
            return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)
