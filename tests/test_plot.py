"""minigpt-plot: the curves drawn are the numbers the runs logged."""

import json
import sys

import pytest

from minigpt.cli.plot import main
from minigpt.train.plot import PANELS, plot_runs, read_run


def fake_run(directory, steps, stats, evals):
    directory.mkdir()
    lines = [json.dumps({"step": s, "lr": 1e-3, **{k: v[i] for k, v in stats.items()}}) for i, s in enumerate(steps)]
    (directory / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    (directory / "trainer_state.json").write_text(json.dumps({"step": steps[-1], "eval_metrics": evals}))
    return directory


def test_panels_and_lines_are_the_logged_numbers(tmp_path):
    import matplotlib.image

    ppo = fake_run(tmp_path / "ppo", [1, 2, 3], {"loss": [1.0, 0.8, 0.7], "score": [0.1, 0.3, 0.2],
                                                 "kl": [0.0, 0.01, 0.03], "entropy": [2.0, 1.9, 1.8],
                                                 "clipfrac": [0.0, 0.1, 0.05]},
                   [[0, {"score": 0.05, "kl": 0.0}], [3, {"score": 0.25, "kl": 0.02}]])
    dpo = fake_run(tmp_path / "dpo", [1, 2], {"loss": [0.69, 0.6]},
                   [[0, {"loss": 0.7, "accuracy": 0.5, "margin": 0.0}], [2, {"loss": 0.6, "accuracy": 0.75, "margin": 0.3}]])
    out = tmp_path / "curves.png"
    fig = plot_runs([read_run(ppo), read_run(dpo)], out)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["loss", "score", "kl", "entropy", "clipfrac", "accuracy", "margin"]
    assert titles == [p for p in PANELS if p in titles]
    loss = fig.axes[0]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss.get_lines()}
    assert lines == {"ppo train": ([1, 2, 3], [1.0, 0.8, 0.7]), "dpo train": ([1, 2], [0.69, 0.6]),
                     "dpo eval": ([0, 2], [0.7, 0.6])}
    score = {line.get_label(): list(line.get_ydata()) for line in fig.axes[1].get_lines()}
    assert score == {"ppo train": [0.1, 0.3, 0.2], "ppo eval": [0.05, 0.25]}
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 300 and image.shape[1] > 600 and image.std() > 0


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training run's directory" in err[0]
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "c.jpg")]) == 2
    assert "must name a .png file" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install \"minigpt[plot]\"" in err[0]
    assert not (tmp_path / "c.png").exists()


@pytest.mark.slow
def test_a_real_run_plots_its_loss_and_evals(sft_run, tmp_path):
    curves = read_run(sft_run.out)
    assert curves.train["loss"][1] == pytest.approx(sft_run.train_losses)
    assert main([str(sft_run.out), "--out", str(tmp_path / "sft.png")]) == 0
    assert (tmp_path / "sft.png").stat().st_size > 1000
