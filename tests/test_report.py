"""Metrics out: TensorBoard and W&B (offline) get exactly what train_log.jsonl holds, and resumed runs continue."""

import json
import os
import sys

import pytest

from minigpt.extras import MissingExtra
from minigpt.train import TrainConfig, train


def config(sft_data, out, model_dir, **overrides) -> TrainConfig:
    base = dict(data=str(sft_data), out=str(out), model=str(model_dir), eval_fraction=0.25, batch_size=4,
                micro_batch_size=2, max_steps=6, eval_every=3, lr=2e-3, warmup_steps=1, seed=3)
    return TrainConfig(**{**base, **overrides})


def logged(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def scalars(directory, tag) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory)).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_scalars_equal_the_step_log_and_a_resumed_run_continues(sft_data, text_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    first = train(config(sft_data, out, text_model_dir, report_to=("tensorboard",)), progress=False,
                  should_stop=lambda step: step == 4)
    assert first.interrupted and first.step == 4
    train(config(sft_data, out, text_model_dir, report_to=("tensorboard",)), resume=True, progress=False)
    board = tmp_path / "run-logs" / "tensorboard"
    lines = logged(out)
    losses = scalars(board, "train/loss")
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]  # each step once, across the resume
    assert [v for _, v in losses] == pytest.approx([e["loss"] for e in lines], rel=1e-6)
    assert [v for _, v in scalars(board, "train/lr")] == pytest.approx([e["lr"] for e in lines], rel=1e-6)
    assert [s for s, _ in scalars(board, "eval/loss")] == [0, 3, 6]
    state = json.loads((out / "trainer_state.json").read_text())
    assert [v for _, v in scalars(board, "eval/loss")] == pytest.approx([m["loss"] for _, m in state["eval_metrics"]],
                                                                         rel=1e-6)
    assert all(v > 0 for _, v in scalars(board, "train/tokens_per_second"))
    assert len(scalars(board, "train/grad_norm")) == 6


class FakeWandb:
    """Stands in for the wandb module: records what minigpt sends (wandb 0.31 keeps offline runs in a binary
    file that only its Go core reads back)."""

    def __init__(self):
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, metrics, step):
        self.logs.append((step, metrics))

    def finish(self):
        self.finished += 1


def test_wandb_gets_the_step_log_and_evals_and_resumes_the_same_run(sft_data, text_model_dir, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    cfg = config(sft_data, out, text_model_dir, report_to=("wandb",))
    train(cfg, progress=False, should_stop=lambda step: step == 2)
    train(cfg, resume=True, progress=False)
    first, second = fake.inits
    assert first["id"] == second["id"] and first["resume"] == "allow" and first["name"] == "run"
    assert first["config"]["lr"] == 2e-3 and first["dir"] == str(tmp_path / "run-logs")
    steps = [(step, m["train/loss"]) for step, m in fake.logs if "train/loss" in m]
    assert steps == [(e["step"], e["loss"]) for e in logged(out)]
    assert [step for step, m in fake.logs if "eval/loss" in m] == [0, 3, 6] and fake.finished == 2


@pytest.mark.slow
def test_a_real_wandb_offline_run_is_written(sft_data, text_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(config(sft_data, tmp_path / "run", text_model_dir, max_steps=2, report_to=("wandb",),
                 report_dir=str(tmp_path / "logs")), progress=False)
    [record] = (tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    assert record.stat().st_size > 0


def test_a_missing_backend_is_one_line_and_writes_nothing(sft_data, text_model_dir, tmp_path, monkeypatch, capsys):
    from minigpt.cli.finetune import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingExtra, match=r'pip install "minigpt\[tensorboard\]"'):
        train(config(sft_data, tmp_path / "a", text_model_dir, report_to=("tensorboard",)), progress=False)
    assert not (tmp_path / "a").exists()
    code = main(["--data", str(sft_data), "--out", str(tmp_path / "b"), "--model", str(text_model_dir),
                 "--max-steps", "2", "--report-to", "tensorboard", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "minigpt[tensorboard]" in err[0]
    assert not (tmp_path / "b").exists()
    with pytest.raises(Exception, match="report_to mlflow"):
        train(config(sft_data, tmp_path / "c", text_model_dir, report_to=("mlflow",)), progress=False)


TRACKIO_RUN = """
import json, sys
from minigpt.train import TrainConfig, train
cfg = TrainConfig(**json.loads(sys.argv[1]))
train(cfg, progress=False, should_stop=(lambda step: step == 2) if sys.argv[2] == "stop" else None,
      resume=sys.argv[2] == "resume")
"""

TRACKIO_READ = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
[run] = SQLiteStorage.get_runs("minigpt-test")
print(json.dumps({"run": run, "logs": SQLiteStorage.get_logs("minigpt-test", run),
                  "config": SQLiteStorage.get_run_config("minigpt-test", run)}, default=str))
"""


@pytest.mark.slow
def test_trackio_holds_the_step_log_and_a_resumed_run_continues(sft_data, text_model_dir, tmp_path):
    pytest.importorskip("trackio")
    import subprocess

    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "TRACKIO_PROJECT": "minigpt-test"}
    out = tmp_path / "run"
    fields = dict(data=str(sft_data), out=str(out), model=str(text_model_dir), eval_fraction=0.25, batch_size=4,
                  micro_batch_size=2, max_steps=6, eval_every=3, lr=2e-3, warmup_steps=1, seed=3,
                  report_to=["trackio"])
    for phase in ("stop", "resume"):
        subprocess.run([sys.executable, "-c", TRACKIO_RUN, json.dumps(fields), phase], env=env, check=True,
                       timeout=300)
    read = subprocess.run([sys.executable, "-c", TRACKIO_READ], env=env, check=True, capture_output=True, text=True,
                          timeout=120)
    got = json.loads(read.stdout.strip().splitlines()[-1])
    assert got["run"].startswith("run-")  # one run across the resume
    losses = [(row["step"], row["train/loss"]) for row in got["logs"] if row.get("train/loss") is not None]
    assert losses == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in logged(out)]
    assert [row["step"] for row in got["logs"] if row.get("eval/loss") is not None] == [0, 3, 6]
    assert got["config"]["lr"] == 2e-3
