"""Measured choices, kept per machine: a stopwatch decides once, and every later process reuses its answer.

The kernels a timing may pick between (`minigpt.kernels`) compute the same function up to fp32 reduction
order, but measuring anew in every process lets a busy neighbour flip a near tie, and with it the rounding of
the logits. So each choice is measured once per machine and kept in a small JSON file,

    $MINIGPT_KERNEL_CACHE, else $XDG_CACHE_HOME/minigpt/kernels.json (default ~/.cache/minigpt/kernels.json),

under the machine (torch version, CPU model and ISA flags, any instruction-set cap set in the environment, or the
GPU's name) and what was measured (kind,
dtype, shape). The same machine then gives the same layouts, hence the same tokens, run after run, and a load
after the first pays no timing. Writes are atomic (a temporary file renamed over the old one); a file that
cannot be read is measured again and rewritten, an unwritable one just means measuring in each process.
`MINIGPT_KERNELS=remeasure` (or `layouts="remeasure"`) measures again and stores the new answers;
`MINIGPT_KERNELS=as-is` keeps the checkpoint's layouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

CACHE_ENV = "MINIGPT_KERNEL_CACHE"
MODE_ENV = "MINIGPT_KERNELS"
MODES = ("measure", "remeasure", "as-is")
FORMAT = 1
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "i8mm")  # shown in the key; all flags are hashed
# Variables that cap the instruction sets the libraries use (ATen's vector kernels, oneDNN, MKL): a process run
# under a cap is a different machine for the kernels, so a cap set here is part of the key.
ISA_CAP_ENVS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cache_path() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minigpt" / "kernels.json"


def layout_mode(layouts: str | None) -> str:
    """The layout policy: the argument, else $MINIGPT_KERNELS, else "measure"."""
    mode = layouts or os.environ.get(MODE_ENV, "").strip() or "measure"
    if mode not in MODES:
        raise ValueError(f"layouts={mode!r}: the choices are {', '.join(MODES)} (argument or ${MODE_ENV})")
    return mode


def cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, its ISA flags) from /proc/cpuinfo; the platform's words where there is none."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, sorted((fields.get("flags") or fields.get("Features") or "").split())


def machine_id(device: torch.device) -> str:
    """What a measurement holds for: torch's version and the CPU (model, ISA flags, caps set in the environment)
    or the accelerator's name."""
    if device.type == "cuda":
        return f"torch {torch.__version__} | {torch.cuda.get_device_name(device)}"
    if device.type != "cpu":
        return f"torch {torch.__version__} | {device.type}"
    model, flags = cpu_description()
    shown = " ".join(f for f in ISA_FLAGS if f in flags)
    digest = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    caps = "".join(f" | {cap}" for cap in isa_caps())
    return f"torch {torch.__version__} | {model} | {shown} | flags {digest} | {os.cpu_count()} cpus{caps}"


def isa_caps(names: tuple[str, ...] = ISA_CAP_ENVS) -> list[str]:
    """The instruction-set caps set in this process's environment, as NAME=value (benchmarks print them)."""
    return [f"{name}={os.environ[name]}" for name in names if os.environ.get(name)]


class ChoiceStore:
    """The stored choices of one file, read once and written back atomically after each new measurement."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else cache_path()
        self._data: dict | None = None

    def _load(self) -> dict:
        if self._data is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                ok = isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("machines"), dict)
            except (OSError, ValueError):
                ok = False
            self._data = data if ok else {"format": FORMAT, "machines": {}}
        return self._data

    def get(self, machine: str, key: str) -> str | None:
        value = self._load()["machines"].get(machine, {})
        return value.get(key) if isinstance(value, dict) else None

    def put(self, machine: str, key: str, value: str) -> None:
        self._data = None  # another process may have added choices since: merge into the file as it is now
        machines = self._load()["machines"]
        if not isinstance(machines.get(machine), dict):
            machines[machine] = {}
        machines[machine][key] = value
        self._write()

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self._data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:  # a read-only home: the choice holds for this process only
            try:
                os.unlink(tmp)
            except (OSError, UnboundLocalError):
                pass

    def choose(self, machine: str, key: str, measure: Callable[[], str], *, valid: tuple[str, ...],
               remeasure: bool = False) -> str:
        """The stored choice for `key` on `machine`; measured (and stored) when there is none or `remeasure`."""
        stored = None if remeasure else self.get(machine, key)
        if stored in valid:
            return stored
        value = measure()
        self.put(machine, key, value)
        return value
