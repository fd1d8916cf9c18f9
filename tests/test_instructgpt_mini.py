"""InstructGPT in miniature (examples/instructgpt_mini): the task world's labelers, the report's formulas, and the
whole pipeline shrunken to tiny sizes (CI keeps it working; the real run is the script)."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.instructgpt_mini import evaluate as ev  # noqa: E402
from examples.instructgpt_mini.pipeline import Pipeline, Settings, calibrate_noise, unique_ranked  # noqa: E402
from examples.instructgpt_mini.world import FAMILIES, World, pairwise_agreement, positional_credit  # noqa: E402


def test_the_labeler_gives_full_marks_to_answers_and_less_to_mistakes():
    world, rng = World(0), random.Random(0)
    tasks = world.tasks(200, seed=1)
    assert {t.family for t in tasks} == set(FAMILIES)
    worse = 0
    for task in tasks:
        assert world.score(task, task.answer) == 1.0, task
        assert world.score(task, "") == 0.0
        assert 0.0 <= world.score(task, "lorem ipsum 12 dolor") < 1.0
        mistake = world.demonstration(task, rng, error_rate=1.0)
        worse += world.score(task, mistake) < 1.0
    assert worse == len(tasks)  # every planted mistake costs something (partial credit, not always zero)


def test_partial_credit_is_graded():
    world = World(0)
    tasks = world.tasks(60, seed=2)
    count = next(t for t in tasks if t.family == "count" and len(t.answer.split()) == 4)
    first, second, *rest = count.answer.split()
    assert world.score(count, " ".join([second, first] + rest)) == 0.5  # two of four positions right
    assert positional_credit(["a", "b"], ["a", "b", "c"]) == pytest.approx(2 / 3)
    repeat = next(t for t in tasks if t.family == "repeat" and len(t.answer.split()) == 4)
    word = repeat.answer.split()[0]
    assert world.score(repeat, " ".join([word] * 3)) == pytest.approx(0.75 - 0.25)  # one short: 3/4, minus 0.25
    assert world.score(repeat, " ".join([word] * 5)) == pytest.approx(0.75)  # one too many
    listing = next(t for t in tasks if t.family == "list" and len(t.answer.split()) == 3)
    items = listing.answer.split()
    assert world.score(listing, " ".join(items[1:] + items[:1])) == pytest.approx(0.7)  # wrong start


def test_facts_come_from_the_pretraining_text_only():
    world = World(3)
    text = "\n".join(world.pretraining_documents(400, seed=1))
    for name, city in list(world.home.items())[:10]:
        assert f"{name} lives in {city}." in text
    assert "Q:" not in text  # the instruction format is taught by SFT, not pretraining


def test_fact_questions_are_judged_by_the_world_s_facts():
    world = World(0)
    facts = [t for t in world.tasks(96, seed=5) if t.family == "fact"]
    assert len({t.prompt for t in facts}) == len(facts) > 12
    for task in facts:
        name, truth = task.answer.split()[0], task.answer.split()[-1].rstrip(".")
        assert truth in (world.home[name], world.pet[name])
        assert world.score(task, task.answer) == 1.0
        wrong = task.answer.replace(truth, "Oslo" if truth != "Oslo" and truth == world.home[name] else "goat")
        if wrong != task.answer:
            assert world.score(task, wrong) < 0.5


def test_noise_is_calibrated_to_the_wanted_agreement():
    rng = random.Random(0)
    clean = [[rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(4)] for _ in range(400)]
    sigma = calibrate_noise(clean, 0.75, random.Random(1))
    between = with_clean = total = 0
    check = random.Random(2)
    for row in clean:
        first, second = ([c + check.gauss(0.0, sigma) for c in row] for _ in range(2))
        a, n = pairwise_agreement(row, first, second)
        b, _ = pairwise_agreement(row, first)
        between, with_clean, total = between + a, with_clean + b, total + n
    assert between / total == pytest.approx(0.75, abs=0.03)  # two labelers with each other, fresh draws
    assert with_clean / total > between / total + 0.05  # each labeler is closer to the truth than to another one


def test_report_formulas():
    assert ev.win_rate([1.0, 0.5, 0.0], [0.5, 0.5, 1.0]) == pytest.approx(0.5)  # win, tie, loss
    mean, se = ev.paired_difference([1.0, 0.5, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5])  # differences .5 0 -.5 .5
    assert mean == pytest.approx(0.125) and se == pytest.approx((((0.375 ** 2) * 2 + 0.125 ** 2 + 0.625 ** 2) / 3 / 4) ** 0.5)
    accuracy, pairs = ev.ranking_accuracy([[3.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]])
    assert (accuracy, pairs) == (1.0, 2)  # the tie between the last two is not a pair
    assert unique_ranked(["a", "b", "a", " "], [0.1, 0.9, 0.5, 2.0]) == ["b", "a"]


def test_demonstrations_comparisons_and_ppo_use_disjoint_prompts(tmp_path):
    """Held-out, demonstration and RL prompts are three disjoint sets covering every prompt of the world, and the
    files the stages read respect them (InstructGPT's SFT, RM and PPO datasets hold different prompts)."""
    world = World(0)
    every = {q for family in FAMILIES for q in world.prompts(family)}
    assert len(every) == 60 + 80 + 80 + 100
    assert {t.prompt for t in world.tasks(400, seed=9, distinct=False)} <= every
    settings = dataclasses.replace(Settings(), documents=5, demonstrations=300, ppo_prompts=300, heldout=40)
    pipeline = Pipeline(tmp_path / "mini", settings)
    heldout, sft_prompts, rl_prompts = pipeline.prompt_sets()
    assert heldout | sft_prompts | rl_prompts == every
    assert not (heldout & sft_prompts or heldout & rl_prompts or sft_prompts & rl_prompts)
    rest = len(every) - len(heldout)  # a third for the demonstrations, two for RL, per family (rounded)
    assert abs(len(sft_prompts) - rest * settings.demo_share) <= len(FAMILIES) / 2
    assert len(sft_prompts) + len(rl_prompts) == rest
    pipeline.write_world()
    demos = {json.loads(line)["prompt"] for line in (tmp_path / "mini" / "data" / "sft.jsonl").open()}
    ppo = {json.loads(line)["prompt"] for line in (tmp_path / "mini" / "data" / "prompts.jsonl").open()}
    assert demos <= sft_prompts and ppo <= rl_prompts and len(demos) > 60 and len(ppo) > 120


@pytest.mark.slow
def test_the_whole_pipeline_runs_shrunken_and_resumes(tmp_path, tokenizer_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIGPT_TOKENIZER_DIR", str(tokenizer_path))
    settings = dataclasses.replace(
        Settings(), documents=60, pretrain_steps=3, demonstrations=40, comparison_prompts=20, k=3, ppo_prompts=20,
        ppo_steps=2, ppo_batch=4, hack_steps=2, segments=2, heldout=10, best_of=2, max_new_tokens=6, n_layer=1,
        n_embd=32, n_positions=64)
    out = tmp_path / "mini"
    Pipeline(out, settings).run()
    stages = json.loads((out / "stages.json").read_text())["stages"]
    assert list(stages) == ["world", "pretrain", "sft", "comparisons", "reward_model", "ppo", "ppo_ptx",
                            "ppo_beta0", "dpo", "evaluate"]
    assert [p["step"] for p in stages["ppo"]["result"]["curve"]] == [0, 1, 2]  # stopped, scored, resumed
    models = stages["evaluate"]["result"]["models"]
    assert set(models) == {"pretrained", "SFT", "best-of-2", "DPO", "PPO", "PPO-ptx", "PPO beta=0"}
    for row in models.values():
        assert 0.0 <= row["labeler"] <= 1.0 and 0.0 <= row["win_vs_sft"] <= 1.0
    assert models["SFT"]["win_vs_sft"] == 0.5 and models["SFT"]["kl_to_sft"] == 0.0
    report = (out / "report.md").read_text()
    assert "| PPO-ptx |" in report and "Reward model, held-out pairs" in report
    from PIL import Image

    with Image.open(out / "curves.png") as image:
        assert image.size[0] > 2 * image.size[1]  # three panels side by side
    capsys.readouterr()
    Pipeline(out, settings).run()  # again: every stage is found done
    assert capsys.readouterr().err.count("done before, skipped") == 10
    with pytest.raises(SystemExit, match="other settings"):
        Pipeline(out, dataclasses.replace(settings, seed=1))
