"""Metrics out: every step's numbers and every evaluation to TensorBoard, Weights & Biases and/or trackio.

`report_to` names the backends ("tensorboard", "wandb", "trackio"; optional extras: `pip install
"minigpt[tensorboard]"`, `"minigpt[wandb]"`, `"minigpt[trackio]"`). Each gets the run's config once, then `train/<name>` at every step (what train_log.jsonl
holds, plus tokens/s and the gradient norm) and `eval/<name>` at every evaluation, the step as the x-axis.
Logs go to `report_dir` (default: `<out>-logs`, beside the checkpoint, which is replaced at every save).
A resumed run continues the same curves: TensorBoard drops events past the resumed step, and W&B resumes the
run whose id is derived from the checkpoint's path. Only rank 0 reports under torchrun.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..extras import MissingExtra

BACKENDS = ("tensorboard", "wandb", "trackio")


def default_report_dir(out: str | Path) -> Path:
    out = Path(out).expanduser()
    return out.with_name(out.name + "-logs")


class TensorBoardReporter:
    def __init__(self, directory: Path, config: dict, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtra("--report-to tensorboard needs tensorboard: pip install \"minigpt[tensorboard]\"") \
                from None
        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, directory: Path, config: dict, run_name: str, run_id: str) -> None:
        try:
            import wandb
        except ImportError:
            raise MissingExtra("--report-to wandb needs wandb: pip install \"minigpt[wandb]\"") from None
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "minigpt"), name=run_name, id=run_id,
                              resume="allow", dir=str(directory), config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioReporter:
    def __init__(self, config: dict, run_name: str) -> None:
        try:
            import trackio
        except ImportError:
            raise MissingExtra("--report-to trackio needs trackio: pip install \"minigpt[trackio]\"") from None
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "minigpt"), name=run_name, config=config,
                                resume="allow", embed=False)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class Reporters:
    """The chosen backends, fed by the training loop (nothing at all when none is chosen)."""

    def __init__(self, backends: tuple[str, ...], directory: Path, *, config: dict, out: Path,
                 start_step: int) -> None:
        unknown = sorted(set(backends) - set(BACKENDS) - {"none"})
        if unknown:
            raise ValueError(f"report_to {', '.join(unknown)}: the choices are {', '.join(BACKENDS)} or none")
        self.backends = []
        run_id = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
        for name in dict.fromkeys(b for b in backends if b != "none"):
            if name == "tensorboard":
                self.backends.append(TensorBoardReporter(directory, config, start_step))
            elif name == "wandb":
                self.backends.append(WandbReporter(directory, config, out.name, run_id))
            else:
                self.backends.append(TrackioReporter(config, f"{out.name}-{run_id[:8]}"))

    def step(self, step: int, numbers: dict[str, float]) -> None:
        self._log(step, {f"train/{k}": v for k, v in numbers.items() if k != "step" and _is_number(v)})

    def eval(self, step: int, metrics: dict[str, float]) -> None:
        self._log(step, {f"eval/{k}": v for k, v in metrics.items() if _is_number(v)})

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log(step, metrics)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
