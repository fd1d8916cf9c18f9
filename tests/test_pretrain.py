"""Raw-text training: the token file, its cache, learning from random weights, exact resume, two processes, and
bad input refused before anything is written."""

import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, run_script

from minigpt import GPT
from minigpt.train.data import DataError
from minigpt.train import PretrainConfig, TrainingError, train_lm
from minigpt.train import corpus as corpus_module
from minigpt.train.corpus import TokenWindows, load_token_file
from minigpt.train.lm import LM


PRETRAIN = str(REPO_ROOT / "scripts" / "pretrain.py")
SEPARATOR = "\n\n===\n\n"


def synthetic_document(rng: random.Random) -> str:
    """Lines with strong structure: who has how many of what, then counting up to that number."""
    names, things = ["Anna", "Ben", "Clara", "David"], ["apples", "books", "candles", "drums"]
    lines = []
    for _ in range(rng.randint(3, 6)):
        n = rng.randint(2, 9)
        lines.append(f"{rng.choice(names)} has {n} {rng.choice(things)}. Then {rng.choice(names)} counts: "
                     + ", ".join(str(i) for i in range(1, n + 1)) + ".")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for part in range(3):
        (root / f"part{part}.txt").write_text(SEPARATOR.join(synthetic_document(rng) for _ in range(30)) + "\n",
                                              encoding="utf-8")
    return root


def lm_config(text_model_dir, corpus, out, **overrides):
    settings = dict(data=str(corpus), out=str(out), model=str(text_model_dir / "config.json"), random_init=True,
                    tokenizer=str(text_model_dir), doc_separator=SEPARATOR, block_size=32, batch_size=8, lr=5e-3,
                    seed=0, cache_dir=str(out.parent / "cache"))
    settings.update(overrides)
    return PretrainConfig(**settings)


def expected_ids(files, tokenizer, separator):
    ids = []
    for path in files:
        for document in path.read_text(encoding="utf-8").split(separator) if separator else [path.read_text()]:
            tokens = tokenizer.encode(document)
            if tokens:
                ids += tokens + [tokenizer.eos_token_id]
    return ids


# --------------------------------------------------------------------------- the token file


def test_token_file_equals_encode_and_is_reused(corpus, tokenizer, tmp_path, monkeypatch):
    files = sorted(corpus.glob("*.txt"))
    # tiny reads and pieces: documents are cut in pieces and separators straddle reads, the ids must not change
    monkeypatch.setattr(corpus_module, "READ_BYTES", 7)
    monkeypatch.setattr(corpus_module, "PIECE_CHARS", 40)
    first = load_token_file(str(corpus), tokenizer, separator=SEPARATOR, cache_dir=str(tmp_path), progress=False)
    assert not first.reused and first.tokens().tolist() == expected_ids(files, tokenizer, SEPARATOR)
    assert first.num_documents == 90 and first.tokens().dtype == torch.uint16
    stamp = first.path.stat().st_mtime_ns
    again = load_token_file(str(corpus), tokenizer, separator=SEPARATOR, cache_dir=str(tmp_path), progress=False)
    assert again.reused and again.path == first.path and again.path.stat().st_mtime_ns == stamp
    first.path.with_suffix(".json").write_text("{not json")  # a damaged cache entry is rebuilt, not trusted
    rebuilt = load_token_file(str(corpus), tokenizer, separator=SEPARATOR, cache_dir=str(tmp_path), progress=False)
    assert not rebuilt.reused and rebuilt.tokens().tolist() == first.tokens().tolist()
    # one file per document without a separator; a glob; the default cache beside the corpus
    whole = load_token_file(str(corpus / "part*.txt"), tokenizer, progress=False)
    assert whole.tokens().tolist() == expected_ids(files, tokenizer, None) and whole.num_documents == 3
    assert whole.path.parent == corpus / ".minigpt_tokens"
    # changed content -> a new token file (the key is the content, the separator and the tokenizer)
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in files:
        (edited / path.name).write_text(path.read_text() + "One more line.\n")
    other = load_token_file(str(edited), tokenizer, separator=SEPARATOR, cache_dir=str(tmp_path), progress=False)
    assert other.path != first.path and not other.reused
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".u16") == sorted([first.path.name,
                                                                                        other.path.name])


def test_windows_and_the_held_out_tail():
    tokens = torch.arange(100, dtype=torch.int64).to(torch.uint16)
    windows = TokenWindows(tokens, block=8)
    assert len(windows) == 12 and windows[1].tolist() == list(range(8, 17)) and windows.at(3)[0] == 3
    train, held = windows.split_tail(0.2)
    assert (train.start, train.end, held.start, held.end) == (0, 80, 80, 100)
    assert train.max_offset + 8 + 1 <= 80  # no training window reaches the held-out tokens
    with pytest.raises(DataError, match="too few"):
        TokenWindows(tokens[:12], block=8).split_tail(0.5)


def test_sequential_walks_the_windows_in_order_and_random_is_seeded(text_model_dir, corpus, tmp_path):
    class FakeRun:
        train_set = TokenWindows(torch.zeros(1000, dtype=torch.uint16), block=32)

    sequential = LM(lm_config(text_model_dir, corpus, tmp_path / "o", sequential=True))
    assert sequential.batch_indices(FakeRun, 0) == [i * 32 for i in range(8)]
    assert sequential.batch_indices(FakeRun, 3) == [(i % 31) * 32 for i in range(24, 32)]  # wraps after 31
    random_windows = LM(lm_config(text_model_dir, corpus, tmp_path / "o"))
    draws = random_windows.batch_indices(FakeRun, 5)
    assert draws == random_windows.batch_indices(FakeRun, 5) != random_windows.batch_indices(FakeRun, 6)
    assert all(0 <= d <= 1000 - 33 for d in draws) and len(set(d % 32 for d in draws)) > 1  # not aligned


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_random_init_learns_the_corpus_by_orders_of_magnitude(text_model_dir, corpus, tmp_path):
    from transformers import GPT2LMHeadModel

    result = train_lm(lm_config(text_model_dir, corpus, tmp_path / "run", max_steps=40, eval_every=40),
                      progress=False)
    before, after = result.eval_metrics[0][1]["perplexity"], result.eval_metrics[-1][1]["perplexity"]
    assert before > 10_000 and after < before / 1000, (before, after)
    ours = GPT.from_pretrained(tmp_path / "run")
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "run").eval()
    ids = torch.tensor([[464, 3290, 373, 1043, 287]])
    with torch.no_grad():
        assert torch.allclose(ours(ids), theirs(ids).logits, atol=1e-4)


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(text_model_dir, corpus, tmp_path):
    settings = dict(max_steps=4, eval_every=2, micro_batch_size=4)
    full = train_lm(lm_config(text_model_dir, corpus, tmp_path / "full", **settings), progress=False)
    cut = train_lm(lm_config(text_model_dir, corpus, tmp_path / "cut", **settings), progress=False,
                   should_stop=lambda step: step == 2)
    assert cut.interrupted
    resumed = train_lm(lm_config(text_model_dir, corpus, tmp_path / "cut", **settings), resume=True, progress=False)
    assert resumed.train_losses == full.train_losses[2:]
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.eval_metrics == full.eval_metrics


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one(text_model_dir, corpus, tmp_path):
    one = tmp_path / "one"
    train_lm(lm_config(text_model_dir, corpus, one, max_steps=3, micro_batch_size=2, cache_dir=str(tmp_path / "c")),
             progress=False)
    two = tmp_path / "two"
    done = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", PRETRAIN,
                      "--text", str(corpus), "--doc-separator", SEPARATOR, "--random-init",
                      "--model", str(text_model_dir / "config.json"), "--tokenizer", str(text_model_dir),
                      "--block-size", "32", "--batch-size", "8", "--micro-batch-size", "2", "--lr", "5e-3",
                      "--max-steps", "3", "--out", str(two), "--cache-dir", str(tmp_path / "c2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) x 2 micro-batch(es) x 2" in done.stderr
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert len(list((tmp_path / "c2").glob("*.u16"))) == 1  # written once, by the first process


# --------------------------------------------------------------------------- bad input


def test_bad_corpora_are_refused_and_nothing_is_written(text_model_dir, corpus, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "a.txt").write_bytes("good text\n".encode() * 100 + "caf\xe9\n".encode("latin-1"))
    cases = [(empty, {}, "holds no text"), (latin, {}, r"a\.txt: not UTF-8 text \(byte 1003"),
             (corpus, {"block_size": 257}, "block_size 257 exceeds the model's context of 256"),
             (tmp_path / "missing", {}, "text corpus not found")]
    for path, overrides, message in cases:
        out = tmp_path / "out"
        with pytest.raises((DataError, TrainingError), match=message):
            train_lm(lm_config(text_model_dir, path, out, max_steps=1, **overrides), progress=False)
        assert not out.exists()
        assert not any((tmp_path / "cache").glob("*.u16")) if (tmp_path / "cache").exists() else True


@pytest.mark.slow
def test_cli_one_line_errors(text_model_dir, corpus, tmp_path):
    small_vocab = tmp_path / "small.json"
    config = json.loads((text_model_dir / "config.json").read_text())
    small_vocab.write_text(json.dumps({**config, "vocab_size": 1000}))
    common = ["--text", str(corpus), "--tokenizer", str(text_model_dir), "--random-init", "--max-steps", "1",
              "--quiet"]
    cases = [(["--model", str(small_vocab)], "the tokenizer has 50257 tokens but the model only 1000"),
             (["--model", str(text_model_dir / "config.json"), "--block-size", "4096"], "exceeds the model's context")]
    for extra, message in cases:
        out = tmp_path / "out"
        done = run_script(PRETRAIN, *common, *extra, "--out", str(out), "--cache-dir", str(tmp_path / "c"))
        assert done.returncode == 1 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not out.exists() and not (tmp_path / "c").exists()
    assert os.environ.get("MINIGPT_DEBUG") is None
