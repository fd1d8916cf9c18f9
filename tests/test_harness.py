"""lm-evaluation-harness (lm-eval's hf model needs accelerate, in the test extra): minigpt's model class gives the numbers lm-eval's own `hf` model gives on the same checkpoint.

Local tasks only (YAML files over JSONL written here, loaded by `datasets`' json builder): a multiple-choice task,
a rolling-perplexity task, a generate_until task and a loglikelihood (LAMBADA-style) task. No hub access.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from minigpt.inference.harness import MinigptLM, cut, evaluate  # noqa: E402

WORDS = ("the cat dog sun tree red blue cup hat box pen car fish moon book runs sits jumps big small old new and "
         "on in under over with from a an is was").split()
MAX_LENGTH = 48  # shorter than the model's 256 positions, so rolling windows and left truncation both happen


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def models(text_model_dir):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    hf_model = GPT2LMHeadModel.from_pretrained(text_model_dir).eval()
    hf_tok = GPT2TokenizerFast.from_pretrained(text_model_dir)
    hf = HFLM(pretrained=hf_model, tokenizer=hf_tok, batch_size=3, max_length=MAX_LENGTH, device="cpu")
    mine = MinigptLM(str(text_model_dir), batch_size=4, max_length=MAX_LENGTH, device="cpu")
    return mine, hf


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Four tasks over data written here."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    rng = random.Random(0)
    mc = [{"question": sentence(rng, rng.randint(3, 12)) + ":", "choices": [sentence(rng, rng.randint(1, 3))
                                                                           for _ in range(4)],
           "answer": rng.randrange(4)} for _ in range(12)]
    text = [{"text": sentence(rng, rng.randint(5, 70)) + "."} for _ in range(8)]
    gen = [{"question": "Q: " + sentence(rng, rng.randint(2, 40)) + "\nA:", "answer": rng.choice(WORDS)}
           for _ in range(10)]
    for name, rows in (("mc", mc), ("text", text), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def data(name: str) -> str:
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / name}.jsonl\ntest_split: test\n"

    (root / "mini_mc.yaml").write_text(
        "task: mini_mc\n" + data("mc") + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (root / "mini_ppl.yaml").write_text(
        "task: mini_ppl\n" + data("text") + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n")
    (root / "mini_last_word.yaml").write_text(
        "task: mini_last_word\n" + data("text") + "output_type: loglikelihood\n"
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\ndoc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "mini_gen.yaml").write_text(
        "task: mini_gen\n" + data("gen") + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n', '.']\n  max_gen_toks: 12\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return root


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_equals_hf(models):
    mine, hf = models
    rng = random.Random(1)
    pairs = [(sentence(rng, rng.randint(1, 60)), " " + sentence(rng, rng.randint(1, 5))) for _ in range(14)]
    pairs += [("", "the cat"), ("trailing space ", "cat"), (sentence(rng, 80), " " + sentence(rng, 3))]
    got = mine.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    want = hf.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    assert torch.allclose(torch.tensor([g for g, _ in got]), torch.tensor([w for w, _ in want]), atol=1e-4, rtol=0)
    assert [g for _, g in got] == [w for _, w in want]


def test_is_greedy_is_the_argmax_continuation(models):
    """A continuation built from the model's own argmax tokens is greedy; changing one token makes it not."""
    mine, _ = models
    context = "the cat sits on"
    ids = mine.tok_encode(context)
    with torch.no_grad():
        for _ in range(3):
            ids.append(int(mine.model(torch.tensor([ids]))[0, -1].argmax()))
    greedy = mine.tok_decode(ids[len(mine.tok_encode(context)):])
    other = mine.tok_decode(ids[len(mine.tok_encode(context)):-1] + [(ids[-1] + 1) % 50000])
    (_, yes), (_, no) = mine.loglikelihood(requests("loglikelihood", [(context, greedy), (context, other)]),
                                           disable_tqdm=True)
    if mine.tok_encode(context + greedy)[: len(ids)] == ids:  # the text re-encodes to the same tokens
        assert yes
    assert not no


def test_loglikelihood_rolling_equals_hf(models):
    mine, hf = models
    rng = random.Random(2)
    texts = [sentence(rng, n) for n in (1, 10, 47, 48, 49, 150)]  # around and past one 48-token window
    got = mine.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    want = hf.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=0)
    # the whole-string log-likelihood of a text that fits in one window is the plain sum over its tokens
    ids = mine.tok_encode(texts[1])
    with torch.no_grad():
        logps = mine.model(torch.tensor([[mine.eot_token_id] + ids[:-1]]))[0].log_softmax(-1)
    assert abs(got[1] - float(logps.gather(-1, torch.tensor(ids)[:, None]).sum())) < 1e-4


def test_generate_until_equals_hf(models):
    mine, hf = models
    rng = random.Random(3)
    args = [("Q: " + sentence(rng, rng.randint(1, 60)) + "\nA:", {"until": [".", "\n"], "max_gen_toks": 10,
                                                                  "do_sample": False}) for _ in range(7)]
    args += [(sentence(rng, 5), {"until": ["the"], "max_gen_toks": 6, "do_sample": False})]
    got = mine.generate_until(requests("generate_until", args), disable_tqdm=True)
    want = hf.generate_until(requests("generate_until", [(c, dict(k)) for c, k in args]), disable_tqdm=True)
    assert got == want
    assert any(got), "the random model generated nothing at all: the comparison would be empty"


def test_cut_keeps_the_text_before_the_first_stop():
    assert cut("a b. c\nd", [".", "\n"]) == "a b"
    assert cut("a b\nc. d", [".", "\n"]) == "a b"
    assert cut("no stop", ["x", ""]) == "no stop"


def test_local_tasks_give_hf_numbers(models, task_dir):
    mine, hf = models
    tasks = ["mini_mc", "mini_ppl", "mini_last_word", "mini_gen"]
    got = evaluate(mine, tasks, include_path=str(task_dir))["results"]
    want = evaluate(hf, tasks, include_path=str(task_dir))["results"]
    for task in tasks:
        numbers = {k: v for k, v in want[task].items() if isinstance(v, float) and "stderr" not in k}
        assert numbers, f"{task}: lm-eval reported no metric"
        for key, value in numbers.items():
            assert got[task][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (task, key)


def test_unknown_task_is_one_clear_error(models, task_dir):
    from minigpt.errors import MiniGPTError

    with pytest.raises(MiniGPTError, match="unknown lm-eval task"):
        evaluate(models[0], ["no_such_task_xyz"], include_path=str(task_dir))


def test_minigpt_is_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("minigpt") is MinigptLM


def test_cli_runs_a_local_task(text_model_dir, task_dir, tmp_path, capsys):
    from minigpt.cli.eval import main

    out = tmp_path / "results.json"
    assert main(["--model", str(text_model_dir), "--tasks", "mini_mc", "--include-path", str(task_dir),
                 "--device", "cpu", "--output", str(out), "--limit", "4"]) == 0
    assert "mini_mc" in capsys.readouterr().out
    assert "acc,none" in json.loads(out.read_text())["results"]["mini_mc"]
    assert main(["--model", str(text_model_dir), "--tasks", "mini_mc", "--include-path",
                 str(tmp_path / "missing")]) == 2
    assert "--include-path" in capsys.readouterr().err
