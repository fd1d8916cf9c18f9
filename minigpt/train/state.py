"""What a checkpoint holds besides the model: trainer_state.json (settings, progress, evals) and
training_state.safetensors (optimizer moments by parameter name, RNG states, an objective's own tensors).
No pickle anywhere."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError
from .config import TrainConfig, TrainingError

STATE_FILE = "trainer_state.json"
TENSOR_STATE_FILE = "training_state.safetensors"
STATE_FORMAT = 1
# Settings that may differ when resuming: they do not change what is computed.
RESUME_MAY_CHANGE = frozenset({"device", "eval_every", "save_every", "report_to", "report_dir",
                               "gradient_checkpointing"})


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def training_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, Tensor], dict]:
    """Optimizer moments by parameter name + RNG states as tensors; the param groups as JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def restore_training_tensors(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, Tensor],
                             meta: dict, where: Path) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for index, name in enumerate(names):
        prefix = f"optimizer.{name}."
        per_param = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if per_param:
            state[index] = per_param
    if len(state) != len(names) and state:
        missing = [n for i, n in enumerate(names) if i not in state]
        raise CheckpointError(f"{where}: optimizer state missing for {', '.join(missing[:5])}")
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    _match_param_layouts(optimizer)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give restored moments their parameter's memory layout (wte is a transposed view), exactly as a fresh
    AdamW makes them, so a resumed run runs the very same kernels as an uninterrupted one."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)


def read_trainer_state(directory: Path) -> dict:
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"cannot resume: {directory} holds no {STATE_FILE} (not a training checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"cannot resume: {path} is unreadable ({exc})") from None
    if state.get("format") != STATE_FORMAT:
        raise TrainingError(f"cannot resume: {path} has format {state.get('format')!r}, expected {STATE_FORMAT}")
    return state


def resumed_config(config_class: type[TrainConfig], saved: dict, overrides: dict | None) -> TrainConfig:
    """The interrupted run's settings; `overrides` (what the user passed) must agree except RESUME_MAY_CHANGE."""
    config = config_class.from_json(saved)
    changed = {k: v for k, v in (overrides or {}).items() if k not in RESUME_MAY_CHANGE}
    conflicts = [f"{k}={v!r} (run has {getattr(config, k)!r})" for k, v in changed.items()
                 if _normalise(v) != _normalise(getattr(config, k))]
    if conflicts:
        raise TrainingError(f"cannot resume with different settings: {', '.join(conflicts)}; "
                            "pass only --out and --resume (and optionally --device)")
    allowed = {k: v for k, v in (overrides or {}).items() if k in RESUME_MAY_CHANGE}
    return dataclasses.replace(config, **allowed)


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


def read_tensor_state(directory: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    path = directory / TENSOR_STATE_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise CheckpointError(f"cannot resume: {path} is missing or unreadable ({exc})") from None


def read_step_log(path: Path, up_to_step: int) -> list[dict]:
    """The per-step log of a checkpoint (its first `up_to_step` entries); empty if the file is absent (older runs)."""
    if not path.is_file():
        return []
    try:
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    return [e for e in entries if isinstance(e, dict) and e.get("step", 0) <= up_to_step]
