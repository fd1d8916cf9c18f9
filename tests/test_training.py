"""Supervised fine-tuning: schedule, optimizer groups, overfitting, export, exact resume, DDP, bad data."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, run_script, synthetic_instructions, write_jsonl

from minigpt import GPT, Tokenizer
from minigpt.train.data import PromptTemplate
from minigpt.train import (
    STATE_FILE,
    TENSOR_STATE_FILE,
    EpochSampler,
    TrainConfig,
    TrainingError,
    lr_at,
    micro_batches,
    param_groups,
    resume,
    train,
)


FINETUNE = str(REPO_ROOT / "scripts" / "finetune.py")


def tiny_config(data, out, model_dir, **overrides) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=str(model_dir), eval_fraction=0.25, batch_size=4,
                micro_batch_size=2, max_steps=8, lr=2e-3, warmup_steps=2, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def tensors(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def count_above(a: dict, b: dict, tolerance: float) -> int:
    """How many weights (key biases excepted, see `max_difference`) differ by more than `tolerance`."""
    count = 0
    for key in a:
        diff = (a[key] - b[key]).abs()
        if key.endswith("attn.c_attn.bias"):
            width = diff.shape[0] // 3
            diff = torch.cat([diff[:width], diff[2 * width:]])
        count += int((diff > tolerance).sum())
    return count


def max_difference(a: dict, b: dict) -> float:
    """Largest |a - b| over all weights except the attention key biases.

    The key bias adds q.b_k to every score of a query alike, which softmax ignores: its true gradient is 0
    and what autograd returns is rounding noise (~1e-10) that differs with the batch split. Adam divides by
    the noise's own size, so those 64 entries move by +-lr either way; every other weight must agree.
    """
    worst = 0.0
    for key in a:
        diff = (a[key] - b[key]).abs()
        if key.endswith("attn.c_attn.bias"):
            width = diff.shape[0] // 3
            diff = torch.cat([diff[:width], diff[2 * width:]])  # drop the key part [C:2C]
        worst = max(worst, float(diff.max()))
    return worst


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, lr=1.0, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # non-increasing after warmup
    assert lrs[20] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_no_weight_decay_on_biases_layernorms_embeddings(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    groups, names = param_groups(model, 0.1)
    decayed = {n for n, p in model.named_parameters() if any(p is q for q in groups[0]["params"])}
    assert decayed == {n for n in names if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter, once
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "h.0.ln_1.bias", "h.1.attn.c_attn.bias"} <= set(names) - decayed


def test_data_order_depends_only_on_the_step():
    sampler = EpochSampler(10, seed=1)
    first_epoch = sampler.global_batch(0, 5) + sampler.global_batch(1, 5)
    assert sorted(first_epoch) == list(range(10))
    assert EpochSampler(10, seed=1).global_batch(3, 5) == sampler.global_batch(3, 5)
    assert micro_batches(list(range(8)), rank=1, world=2, micro=2) == [[4, 5], [6, 7]]


def test_sft_overfits_and_greedy_reproduces_the_responses(sft_run, sft_data):
    result = sft_run
    assert result.train_losses[-1] <= 0.2 * result.train_losses[0], result.train_losses[::10]
    model = GPT.from_pretrained(str(result.out))
    tokenizer = Tokenizer.from_pretrained(result.out)
    template = PromptTemplate.load(result.out)
    for record in map(json.loads, sft_data.read_text().splitlines()):
        prompt = torch.tensor([tokenizer.encode(template.render(record["prompt"]))])
        out = model.generate(prompt, 20, eos_token_id=tokenizer.eos_token_id)[0, prompt.shape[1]:].tolist()
        assert tokenizer.decode(out[: out.index(tokenizer.eos_token_id)]) == record["response"]


def test_checkpoint_reloads_in_minigpt_and_transformers(sft_run, text_model_dir):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    out = sft_run.out
    assert {"model.safetensors", "config.json", "vocab.json", "merges.txt", "prompt_template.json"} <= {
        p.name for p in out.iterdir()}
    ours = GPT.from_pretrained(str(out))
    theirs = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    assert not torch.equal(tensors(out)["transformer.h.0.mlp.c_fc.weight"],
                           tensors(text_model_dir)["transformer.h.0.mlp.c_fc.weight"])  # it did train
    ids = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() <= 1e-5
    text = "### Instruction:\nHello there\n"
    assert GPT2TokenizerFast.from_pretrained(str(out))(text)["input_ids"] == Tokenizer.from_pretrained(out).encode(text)


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_bit_identical(text_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    straight = train(tiny_config(data, tmp_path / "straight", text_model_dir), progress=False)
    assert not straight.interrupted and straight.step == 8

    stopped = train(tiny_config(data, tmp_path / "split", text_model_dir), progress=False,
                    should_stop=lambda step: step == 3)
    assert stopped.interrupted and stopped.step == 3
    state = json.loads((tmp_path / "split" / STATE_FILE).read_text())
    assert state["step"] == 3 and not state["finished"]
    resumed = resume(tmp_path / "split", progress=False)
    assert resumed.step == 8 and not resumed.interrupted
    assert resumed.train_losses == straight.train_losses[3:]
    a, b = tensors(tmp_path / "straight"), tensors(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (load_file(str(tmp_path / d / TENSOR_STATE_FILE)) for d in ("straight", "split"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("optimizer."))
    assert resumed.evals == straight.evals


@pytest.mark.slow
def test_adamw_is_fused_and_a_resume_keeps_the_kernel_its_state_was_made_with(text_model_dir, tmp_path, monkeypatch):
    """New runs step AdamW's fused kernel; a checkpoint made by the per-tensor loop (as before the switch) resumes
    with that loop, bit-identical to an uninterrupted run of it (the kernels differ in the last bit)."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    train(tiny_config(data, tmp_path / "fused", text_model_dir, max_steps=3), progress=False)
    groups = json.loads((tmp_path / "fused" / STATE_FILE).read_text())["optimizer"]["param_groups"]
    assert [g["fused"] for g in groups] == [True, True]

    monkeypatch.setattr("minigpt.train.run.fused_adamw", lambda device: None)  # the old per-tensor loop
    loop = train(tiny_config(data, tmp_path / "loop", text_model_dir), progress=False)
    train(tiny_config(data, tmp_path / "split", text_model_dir), progress=False, should_stop=lambda step: step == 3)
    monkeypatch.undo()
    resumed = resume(tmp_path / "split", progress=False)
    assert resumed.train_losses == loop.train_losses[3:]
    a, b = tensors(tmp_path / "loop"), tensors(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    groups = json.loads((tmp_path / "split" / STATE_FILE).read_text())["optimizer"]["param_groups"]
    assert [g["fused"] for g in groups] == [None, None]


@pytest.mark.slow
def test_a_resume_multiplies_with_the_kernel_its_run_started_with(text_model_dir, tmp_path, monkeypatch):
    """The products' kernel is measured per machine (`training_kernel`); the run records it, and a resumed run
    uses the recorded one even where a new measurement would pick the other: bit-identical to a straight run."""
    from minigpt.kernels import onednn_available

    if not onednn_available():
        pytest.skip("this torch has no oneDNN")
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    monkeypatch.setattr("minigpt.train.run.training_kernel", lambda *args, **kwargs: "onednn")
    straight = train(tiny_config(data, tmp_path / "straight", text_model_dir), progress=False)
    train(tiny_config(data, tmp_path / "split", text_model_dir), progress=False, should_stop=lambda step: step == 3)
    assert json.loads((tmp_path / "split" / STATE_FILE).read_text())["matmul_kernel"] == "onednn"
    monkeypatch.setattr("minigpt.train.run.training_kernel", lambda *args, **kwargs: "in_out_split")
    resumed = resume(tmp_path / "split", progress=False)
    assert resumed.train_losses == straight.train_losses[3:]
    a, b = tensors(tmp_path / "straight"), tensors(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = train(tiny_config(data, tmp_path / "plain", text_model_dir), progress=False)
    assert plain.train_losses == pytest.approx(straight.train_losses, rel=1e-4)  # the same function, rounded apart


def test_resume_refuses_changed_settings_or_data_and_keeps_the_checkpoint(text_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    out = tmp_path / "run"
    train(tiny_config(data, out, text_model_dir), progress=False, should_stop=lambda step: step == 2)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(TrainingError, match="lr=0.1"):
        resume(out, overrides={"lr": 0.1}, progress=False)
    write_jsonl(data, synthetic_instructions(12), {3: "{broken"})
    with pytest.raises(TrainingError, match="changed since the run started"):
        resume(out, progress=False)
    assert (out / "model.safetensors").read_bytes() == before
    assert json.loads((out / STATE_FILE).read_text())["step"] == 2


def test_gradient_accumulation_matches_one_big_batch(text_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    big = train(tiny_config(data, tmp_path / "big", text_model_dir, micro_batch_size=4, max_steps=3), progress=False)
    small = train(tiny_config(data, tmp_path / "small", text_model_dir, micro_batch_size=1, max_steps=3), progress=False)
    assert small.train_losses == pytest.approx(big.train_losses, rel=1e-5)
    a, b = tensors(tmp_path / "big"), tensors(tmp_path / "small")
    # Adam divides each gradient by its own size, so a weight whose gradient is ~0 moves by up to lr on rounding
    # alone (the key biases, always; here one c_fc entry of 86k): all but a few must agree to 1e-5, all to 1e-4.
    assert max_difference(a, b) <= 1e-4
    assert count_above(a, b, 1e-5) <= 4


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one(text_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    one = tmp_path / "one"
    train(tiny_config(data, one, text_model_dir, micro_batch_size=4, max_steps=3), progress=False)
    two = tmp_path / "two"
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", FINETUNE,
                        "--data", str(data), "--out", str(two), "--model", str(text_model_dir),
                        "--eval-fraction", "0.25", "--batch-size", "4", "--micro-batch-size", "1", "--max-steps", "3",
                        "--lr", "2e-3", "--warmup-steps", "2", "--seed", "7")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) x 2 micro-batch(es) x 1" in result.stderr
    a, b, start = tensors(one), tensors(two), tensors(text_model_dir)
    assert max_difference(a, b) <= 1e-5
    assert min((a[k] - start[k]).abs().max() for k in a) > 1e-4  # both moved far more than they differ


@pytest.mark.slow
def test_ctrl_c_writes_a_resumable_checkpoint(text_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, FINETUNE, "--data", str(data), "--out", str(out), "--model", str(text_model_dir),
            "--batch-size", "2", "--max-steps", "100", "--lr", "1e-3", "--eval-every", "1000"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines = []
    for line in proc.stderr:  # progress lines ("train 5/100 ...") arrive as it trains
        lines.append(line)
        if line.startswith("train "):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(lines) + rest
    assert "--resume" in rest and "Traceback" not in rest
    state = json.loads((out / STATE_FILE).read_text())
    assert 0 < state["step"] < 100
    GPT.from_pretrained(str(out))  # a complete, loadable checkpoint
    again = run_script(FINETUNE, "--data", str(data), "--out", str(out), "--model", str(text_model_dir))
    assert again.returncode == 2 and "--resume" in again.stderr  # never restarts over a resumable run
    resumed = run_script(FINETUNE, "--out", str(out), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / STATE_FILE).read_text())["step"] == 100


@pytest.mark.slow
def test_bad_data_cli_one_line_and_skip(text_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", synthetic_instructions(6), {2: "{oops", 4: json.dumps({"prompt": "p"})})
    out = tmp_path / "run"
    rejected = run_script(FINETUNE, "--data", str(bad), "--out", str(out), "--model", str(text_model_dir))
    assert rejected.returncode == 1
    assert rejected.stderr.count("\n") == 1 and "bad.jsonl:2: invalid JSON" in rejected.stderr
    assert "bad.jsonl:4: missing field 'response'" in rejected.stderr and not out.exists()
    skipped = run_script(FINETUNE, "--data", str(bad), "--out", str(out), "--model", str(text_model_dir),
                         "--skip-bad", "--max-steps", "2", "--batch-size", "2")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped " in skipped.stderr and "bad.jsonl:2: invalid JSON" in skipped.stderr
    assert "6 examples from 6 records" in skipped.stderr
    assert json.loads((out / STATE_FILE).read_text())["data_report"]["skipped"][1].endswith(
        "bad.jsonl:4: missing field 'response'; a record needs 'prompt' and 'response'")


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "batch_size must be >= 1"),
    (["--batch-size", "4", "--micro-batch-size", "3"], "not a multiple of micro_batch_size"),
    (["--model", "/nonexistent/dir"], "does not exist"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--data", "/nonexistent.jsonl"], "data file not found"),
])
@pytest.mark.slow
def test_bad_settings_are_one_line(text_model_dir, tmp_path, sft_data, args, message):
    base = ["--data", str(sft_data), "--out", str(tmp_path / "o"), "--model", str(text_model_dir)]
    result = run_script(FINETUNE, *base, *args)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_save_pretrained_is_atomic(tiny_dir, tokenizer, tmp_path):
    from minigpt.checkpoint import write_atomically

    model = GPT.from_pretrained(str(tiny_dir))
    out = tmp_path / "saved"
    model.save_pretrained(str(out), template=PromptTemplate())
    reloaded = GPT.from_pretrained(str(out))
    ids = torch.randint(0, 1000, (1, 16))
    assert torch.equal(reloaded(ids), model(ids))
    before = sorted(p.name for p in out.iterdir())

    def failing_fill(directory):
        (directory / "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(Exception, match="disk full"):
        write_atomically(out, failing_fill)
    assert sorted(p.name for p in out.iterdir()) == before  # the old checkpoint is untouched
    assert torch.equal(GPT.from_pretrained(str(out))(ids), model(ids))
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temporary directory left behind


def test_save_pretrained_over_a_directory_keeps_files_it_does_not_write(tiny_dir, tmp_path):
    """As transformers: the files a save writes are replaced, everything else in the directory stays."""
    model = GPT.from_pretrained(str(tiny_dir))
    out = tmp_path / "saved"
    out.mkdir()
    mine = {"vocab.json": "{}", "merges.txt": "#version: 0.2\n", "prompt_template.json": "{}", "README.md": "# notes\n",
            "generation_config.json": '{"max_length": 20}', "model.safetensors": "stale", "config.json": "stale"}
    for name, text in mine.items():
        (out / name).write_text(text)
    (out / "samples").mkdir()
    (out / "samples" / "a.txt").write_text("kept")
    model.save_pretrained(str(out))
    for name in ("vocab.json", "merges.txt", "prompt_template.json", "README.md", "generation_config.json"):
        assert (out / name).read_text() == mine[name], name
    assert (out / "samples" / "a.txt").read_text() == "kept"
    ids = torch.randint(0, 1000, (1, 8))
    assert torch.equal(GPT.from_pretrained(str(out))(ids), model(ids))  # weights and config were replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_bf16_autocast_path_trains(text_model_dir, sft_data, tmp_path):
    """precision=bf16 (autocast; what CUDA runs use by default) on CPU: same losses as fp32 to bf16 accuracy."""
    fp32 = train(tiny_config(sft_data, tmp_path / "a", text_model_dir, max_steps=2), progress=False)
    bf16 = train(tiny_config(sft_data, tmp_path / "b", text_model_dir, max_steps=2, precision="bf16"), progress=False)
    assert bf16.train_losses == pytest.approx(fp32.train_losses, rel=2e-2)
    assert tensors(tmp_path / "b")["transformer.h.0.mlp.c_fc.weight"].dtype == torch.float32  # fp32 master weights


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_once_all_workers_agree(text_model_dir, tmp_path):
    """A terminal's Ctrl-C reaches torchrun, which forwards SIGINT to each worker: the workers finish the
    same step (they agree through an all-reduce) and rank 0 writes the checkpoint."""
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_instructions(12))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", FINETUNE,
            "--data", str(data), "--out", str(out), "--model", str(text_model_dir), "--batch-size", "4",
            "--max-steps", "100", "--eval-every", "1000"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    for line in proc.stderr:
        if line.startswith("train "):
            os.killpg(proc.pid, signal.SIGINT)
            break
    proc.communicate(timeout=120)
    state = json.loads((out / STATE_FILE).read_text())
    assert 0 < state["step"] < 100 and not state["finished"]
    GPT.from_pretrained(str(out))


def test_random_init_is_explicit_and_seeded(text_model_dir, sft_data, tmp_path):
    def run(out, seed):
        config = TrainConfig(data=str(sft_data), out=str(out), model=str(text_model_dir / "config.json"),
                             random_init=True, tokenizer=str(text_model_dir), eval_fraction=0, batch_size=4,
                             max_steps=1, seed=seed)
        return train(config, progress=False)

    run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    a, b, c = (tensors(tmp_path / d) for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["transformer.wpe.weight"], c["transformer.wpe.weight"])
    loaded = tensors(text_model_dir)
    assert not torch.allclose(a["transformer.h.0.ln_1.bias"], loaded["transformer.h.0.ln_1.bias"])  # not the checkpoint's
    with pytest.raises(Exception, match="unknown preset"):
        train(TrainConfig(data=str(sft_data), out=str(tmp_path / "d"), model="gpt3", random_init=True,
                          tokenizer=str(text_model_dir)), progress=False)


KEEP_FREED_PROBE = """
import resource, sys, torch
from minigpt.train.env import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(3):
    torch.empty(50_000_000).fill_(1.0)  # 200 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(50_000_000).fill_(1.0)  # the same size again: faulted in anew, or the freed block reused
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keep_freed_memory_reuses_a_freed_block_instead_of_faulting_it_in_again():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # CI sets these itself

    def probe(mode: str, **extra: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", KEEP_FREED_PROBE, mode], env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    kept, kept_faults = probe("keep")
    if kept != "True":
        pytest.skip("not glibc")
    _, plain_faults = probe("plain")
    pages = 200_000_000 // 4096
    assert plain_faults > pages // 2  # glibc unmapped the first block; the second is faulted in page by page
    assert kept_faults < pages // 20  # the freed block was reused
    assert probe("keep", MALLOC_TRIM_THRESHOLD_="1")[0] == "False"  # a user's own setting is left alone
