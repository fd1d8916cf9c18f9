"""Scoring: sliding windows, perplexity against transformers, response scores, the minigpt-score CLI."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import REPO_ROOT, synthetic_instructions, write_jsonl

from minigpt import GPT
from minigpt.train.data import PromptTemplate, load_examples
from minigpt.scoring import score_examples, score_ids, windows
from minigpt.train import evaluate

SCORE = str(REPO_ROOT / "scripts" / "score.py")


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 300), window=st.integers(2, 64), data=st.data())
def test_windows_score_every_token_but_the_first_once(length, window, data):
    stride = data.draw(st.integers(1, window))
    scored = []
    for begin, end, first in windows(length, window, stride):
        assert end - begin <= window and begin < first < end + 1
        scored += range(first, end)
    assert scored == list(range(1, length))


@pytest.mark.parametrize("window, stride", [(128, 128), (128, 50), (64, 17)])
def test_perplexity_equals_transformers_on_the_same_windows(tiny_hf, tiny_dir, window, stride):
    """exp of transformers' mean loss, each window's loss weighted by the tokens it scores (the guide's recipe)."""
    ids = torch.randint(0, 1000, (300,), generator=torch.Generator().manual_seed(4))
    ours = score_ids(GPT.from_pretrained(str(tiny_dir)), ids.tolist(), window=window, stride=stride)
    nll_sum, count = 0.0, 0
    with torch.no_grad():
        for begin, end, first in windows(len(ids), window, stride):
            labels = ids[begin:end].clone()
            labels[: first - begin] = -100  # transformers shifts labels itself: position first is predicted
            loss = tiny_hf(ids[None, begin:end], labels=labels[None]).loss
            scored = end - first
            nll_sum += float(loss) * scored
            count += scored
    assert ours.num_tokens == count == 299
    assert ours.perplexity == pytest.approx(math.exp(nll_sum / count), rel=1e-4)


def test_per_token_logprobs_equal_transformers_when_the_text_fits(tiny_hf, tiny_dir):
    ids = torch.randint(0, 1000, (100,), generator=torch.Generator().manual_seed(5))
    ours = score_ids(GPT.from_pretrained(str(tiny_dir)), ids.tolist())
    with torch.no_grad():
        reference = tiny_hf(ids[None]).logits[0].log_softmax(-1)[:-1].gather(1, ids[1:, None])[:, 0]
    assert torch.allclose(ours.logprobs.float(), reference, atol=1e-4)
    assert ours.token_ids == ids[1:].tolist()


def test_response_scores_match_the_training_eval_loss(text_model_dir, tokenizer, tmp_path):
    model = GPT.from_pretrained(str(text_model_dir))
    path = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(5))
    examples, _ = load_examples(path, tokenizer, PromptTemplate(), 128)
    score = score_examples(model, examples, batch_size=2)
    assert score.num_tokens == sum(len(e.ids) - e.prompt_len for e in examples)
    assert score.mean_nll == pytest.approx(evaluate(model, examples, batch_size=3, device=model.device), rel=1e-5)


def run_score(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, SCORE, *args], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_score_cli_text_and_data(text_model_dir, tokenizer, tmp_path):
    text = "The quick brown fox jumps over the lazy dog. " * 12
    (tmp_path / "t.txt").write_text(text)
    result = run_score("--model", str(text_model_dir), "--text", str(tmp_path / "t.txt"), "--stride", "64", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    expected = score_ids(GPT.from_pretrained(str(text_model_dir)), tokenizer.encode(text), stride=64)
    assert payload["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert payload["tokens"] == len(tokenizer.encode(text)) - 1 and payload["window"] == 256

    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(4))
    result = run_score("--model", str(text_model_dir), "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout and "4 responses" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--text", "/nonexistent.txt"], "not found"),
    (["--text", "{txt}", "--stride", "0"], "--stride must be >= 1"),
    (["--text", "{txt}", "--window", "512"], "exceeds the model's 256 positions"),
    (["--text", "{txt}", "--window", "8", "--stride", "9"], "must not exceed"),
    (["--data", "{bad}"], "bad.jsonl:1: invalid JSON"),
    (["--text", "{txt}", "--template", "x.json"], "apply to --data only"),
])
def test_score_cli_bad_input_is_one_line(text_model_dir, tmp_path, args, message):
    (tmp_path / "t.txt").write_text("hello world, hello again")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    args = [a.format(txt=tmp_path / "t.txt", bad=tmp_path / "bad.jsonl") for a in args]
    result = run_score("--model", str(text_model_dir), *args)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
