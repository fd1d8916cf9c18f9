"""scripts/generate.py run as a subprocess, as a new user would."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import REPO_ROOT

from minigpt import GPT, Tokenizer
from minigpt.text import complete

pytestmark = pytest.mark.slow  # every test runs a CLI in a fresh Python process

SCRIPT = str(REPO_ROOT / "scripts" / "generate.py")


def run_cli(*args, stdin_text=None, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("MINIGPT_DEBUG", None)
    return subprocess.run([sys.executable, SCRIPT, *args], input=stdin_text, capture_output=True, text=True,
                          env=env, timeout=300, stdin=None if stdin_text is not None else subprocess.DEVNULL)


def test_help():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--model", "--prompt", "--max-new-tokens", "--num-samples", "--greedy", "--top-k", "--top-p",
                 "--repetition-penalty", "--seed", "--stop", "--stream", "--device", "--dtype", "--json"):
        assert flag in result.stdout


def test_greedy_output_matches_library(text_model_dir):
    result = run_cli("--model", str(text_model_dir), "--prompt", "The sky is", "--greedy",
                     "--max-new-tokens", "25", "--json")
    assert result.returncode == 0, result.stderr
    [sample] = json.loads(result.stdout)["samples"]
    model = GPT.from_pretrained(str(text_model_dir))
    [ref] = complete(model, Tokenizer.from_pretrained(text_model_dir), "The sky is", 25)
    assert sample["new_ids"] == ref.new_ids
    assert sample["text"] == ref.text and sample["text"].startswith("The sky is")
    assert sample["prompt_ids"] == [464, 6766, 318]
    plain = run_cli("--model", str(text_model_dir), "--prompt", "The sky is", "--greedy", "--max-new-tokens", "25")
    assert plain.stdout == ref.text + "\n"
    streamed = run_cli("--model", str(text_model_dir), "--prompt", "The sky is", "--greedy",
                       "--max-new-tokens", "25", "--stream")
    assert streamed.stdout == plain.stdout


def test_five_seeded_samples_are_reproducible(text_model_dir):
    args = ("--model", str(text_model_dir), "--prompt", "Hello", "--num-samples", "5", "--max-new-tokens", "15")
    a = run_cli(*args, "--seed", "42")
    b = run_cli(*args, "--seed", "42")
    c = run_cli(*args, "--seed", "7")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout != c.stdout
    assert [f"=== sample {i}/5 ===" in a.stdout for i in range(1, 6)] == [True] * 5


def test_prompt_from_stdin_and_unconditional(text_model_dir):
    piped = run_cli("--model", str(text_model_dir), "--greedy", "--max-new-tokens", "5", "--json",
                    stdin_text="The sky is")
    assert json.loads(piped.stdout)["samples"][0]["prompt_ids"] == [464, 6766, 318]
    empty = run_cli("--model", str(text_model_dir), "--prompt", "", "--greedy", "--max-new-tokens", "5", "--json")
    sample = json.loads(empty.stdout)["samples"][0]
    assert sample["prompt_ids"] == [50256] and sample["prompt"] == ""


def corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 3])
    return dst


BAD_ARGS = {
    "missing path": (["--model", "/no/such/model"], "does not exist"),
    "hub offline": (["--model", "gpt2"], "offline"),
    "negative max-new-tokens": (["--max-new-tokens", "-1"], "--max-new-tokens"),
    "zero samples": (["--num-samples", "0"], "--num-samples"),
    "top-p zero": (["--top-p", "0"], "--top-p"),
    "top-p above one": (["--top-p", "1.5"], "--top-p"),
    "negative temperature": (["--temperature", "-0.5"], "--temperature"),
    "unknown dtype": (["--dtype", "float8"], "--dtype"),
    "not a number": (["--max-new-tokens", "many"], "invalid int value"),
    "prompt too long": (["--max-new-tokens", "250", "--prompt", "word " * 20], "context"),
    "missing prompt file": (["--prompt-file", "/no/such/file.txt"], "--prompt-file"),
    "zero beams": (["--num-beams", "0"], "--num-beams"),
    "more samples than beams": (["--num-beams", "2", "--num-samples", "3"], "--num-samples 3 must be <="),
    "stream with beams": (["--num-beams", "2", "--stream"], "--stream does not work with beam search"),
    "negative n-gram size": (["--no-repeat-ngram-size", "-1"], "--no-repeat-ngram-size"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_input_is_one_line_on_stderr(case, text_model_dir):
    args, needle = BAD_ARGS[case]
    if "--model" not in args:
        args = ["--model", str(text_model_dir), *args]
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]


def test_corrupt_and_mismatched_checkpoints(text_model_dir, tmp_path):
    bad = corrupt_copy(text_model_dir, tmp_path / "corrupt")
    result = run_cli("--model", str(bad), "--prompt", "hi")
    assert result.returncode != 0 and "corrupt or truncated" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    shutil.copytree(text_model_dir, tmp_path / "mismatch")
    config = json.loads((tmp_path / "mismatch" / "config.json").read_text())
    config["n_layer"] = 3
    (tmp_path / "mismatch" / "config.json").write_text(json.dumps(config))
    result = run_cli("--model", str(tmp_path / "mismatch"), "--prompt", "hi")
    assert result.returncode != 0 and "missing tensors: h.2." in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(text_model_dir):
    result = run_cli("--model", str(text_model_dir), "--device", "cuda")
    assert result.returncode != 0 and "CUDA is not available" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_truncate_policy_warns_and_generates(text_model_dir):
    result = run_cli("--model", str(text_model_dir), "--max-new-tokens", "250", "--prompt", "word " * 20,
                     "--context", "truncate", "--greedy", "--json")
    assert result.returncode == 0, result.stderr
    assert "prompt truncated to its last 7 of 21 tokens" in result.stderr  # 7 + 250 - 1 = 256 positions
    assert len(json.loads(result.stdout)["samples"][0]["prompt_ids"]) == 7


def test_instruct_applies_the_saved_template(sft_run, sft_data):
    record = json.loads(sft_data.read_text().splitlines()[2])
    result = run_cli("--model", str(sft_run.out), "--instruct", "--prompt", record["prompt"], "--greedy",
                     "--max-new-tokens", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout == record["response"] + "\n"  # the response only, stopped at <|endoftext|>
    as_json = run_cli("--model", str(sft_run.out), "--instruct", "--prompt", record["prompt"], "--greedy",
                      "--max-new-tokens", "20", "--json")
    [sample] = json.loads(as_json.stdout)["samples"]
    assert sample["prompt"].startswith("### Instruction:\n" + record["prompt"]) and sample["finish_reason"] == "eos"


@pytest.mark.parametrize("extra, message", [
    ([], "has no prompt_template.json"),
    (["--template", "/nonexistent.json"], "no prompt template at /nonexistent.json"),
])
def test_instruct_without_a_template_is_one_line(text_model_dir, extra, message):
    result = run_cli("--model", str(text_model_dir), "--instruct", "--prompt", "Say hi", *extra)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_instruct_with_the_default_template(text_model_dir):
    result = run_cli("--model", str(text_model_dir), "--instruct", "--prompt", "Say hi", "--template", "default",
                     "--greedy", "--max-new-tokens", "5", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"][0]["prompt"] == "### Instruction:\nSay hi\n\n### Response:\n"


def test_beams_and_logprobs_from_the_cli(text_model_dir):
    beams = run_cli("--model", str(text_model_dir), "--prompt", "The sky is", "--num-beams", "5",
                    "--no-repeat-ngram-size", "2", "--num-samples", "5", "--max-new-tokens", "8", "--json")
    assert beams.returncode == 0, beams.stderr
    samples = json.loads(beams.stdout)["samples"]
    assert len(samples) == 5 and len({tuple(s["new_ids"]) for s in samples}) == 5  # five distinct beams
    scores = [s["score"] for s in samples]
    assert scores == sorted(scores, reverse=True)  # best first
    model = GPT.from_pretrained(str(text_model_dir))
    ids = torch.tensor([samples[0]["prompt_ids"]])
    expected = model.generate(ids, 8, num_beams=5, no_repeat_ngram_size=2, eos_token_id=50256)
    assert samples[0]["new_ids"] == [t for t in expected[0, ids.shape[1]:].tolist() if t != 50256]
    greedy = run_cli("--model", str(text_model_dir), "--prompt", "The sky is", "--greedy", "--max-new-tokens", "4",
                     "--json", "--logprobs", "3")
    sample = json.loads(greedy.stdout)["samples"][0]
    logprobs = sample["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 4
    assert "".join(logprobs["tokens"]) == sample["completion"]
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert len(top) == 3 and max(top.values()) == pytest.approx(value, abs=1e-5)  # greedy took the best
    assert logprobs["text_offset"][0] == len(sample["prompt"])


def test_quantized_generation_from_the_cli(text_model_dir):
    result = run_cli("--model", str(text_model_dir), "--prompt", "The sky is", "--greedy", "--max-new-tokens", "10",
                     "--quantize", "int8", "--json")
    assert result.returncode == 0, result.stderr
    [sample] = json.loads(result.stdout)["samples"]
    model = GPT.from_pretrained(str(text_model_dir), quantize="int8")
    [ref] = complete(model, Tokenizer.from_pretrained(text_model_dir), "The sky is", 10)
    assert sample["new_ids"] == ref.new_ids
    bad = run_cli("--model", str(text_model_dir), "--prompt", "x", "--quantize", "int4")
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "int4" in bad.stderr
