"""Curves of training runs from their own files: `train_log.jsonl` (one line per step) and the evaluations in
`trainer_state.json`. One panel per quantity, runs overlaid: training values as lines, evaluations as dashed
lines with markers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError
from ..extras import pyplot
from .run import LOG_FILE
from .state import STATE_FILE, read_step_log

# What gets a panel, in this order, when any run has it: every objective's loss, PPO's reward, KL, entropy and
# clipping, preference accuracy and margins, PPO-ptx's pretraining loss, response length.
PANELS = ("loss", "score", "kl", "entropy", "clipfrac", "accuracy", "margin", "chosen_reward", "rejected_reward",
          "ptx_loss", "length")


@dataclass
class RunCurves:
    """One run's numbers: name -> (steps, values), for training steps and for evaluations."""

    name: str
    train: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    evals: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)


def read_run(directory: str | Path) -> RunCurves:
    """The curves of the run saved in `directory` (a checkpoint minigpt's trainers wrote)."""
    directory = Path(directory)
    if not (directory / LOG_FILE).is_file() and not (directory / STATE_FILE).is_file():
        raise CheckpointError(f"{directory}: no {LOG_FILE} or {STATE_FILE}: not a training run's directory")
    curves = RunCurves(directory.name or str(directory))
    for entry in read_step_log(directory / LOG_FILE, up_to_step=10**12):
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)):
                steps, values = curves.train.setdefault(key, ([], []))
                steps.append(int(entry["step"]))
                values.append(float(value))
    if (directory / STATE_FILE).is_file():
        try:
            state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {directory / STATE_FILE}: {exc}") from None
        for step, metrics in state.get("eval_metrics", []):
            for key, value in metrics.items():
                steps, values = curves.evals.setdefault(key, ([], []))
                steps.append(int(step))
                values.append(float(value))
    return curves


def panels_of(runs: list[RunCurves]) -> list[str]:
    present = {key for run in runs for key in (*run.train, *run.evals)}
    return [key for key in PANELS if key in present]


def plot_runs(runs: list[RunCurves], out: str | Path, *, columns: int = 3):
    """Draw the runs' curves into `out` (PNG); returns the matplotlib figure (closed)."""
    plt = pyplot("plot")
    names = panels_of(runs)
    if not names:
        raise CheckpointError("nothing to plot: the runs' logs hold none of " + ", ".join(PANELS))
    columns = min(columns, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        for i, run in enumerate(runs):
            colour = colours[i % len(colours)]
            if name in run.train:
                ax.plot(*run.train[name], color=colour, linewidth=1.2, label=f"{run.name} train")
            if name in run.evals:
                ax.plot(*run.evals[name], color=colour, linestyle="--", marker="o", markersize=3,
                        label=f"{run.name} eval")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return fig
