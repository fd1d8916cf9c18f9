"""Facts about the real `gpt2` checkpoint. Runs only where it is on disk, skipped with the reason otherwise.

Point $MINIGPT_GPT2_DIR at a directory with config.json + model.safetensors, or have `gpt2` in the HF cache.
"""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, Tokenizer

THE_DOG_GREEDY = [464, 3290, 373, 1043, 287, 257, 2214, 1474, 262, 16246, 286, 2688, 290, 2688,
                  27262, 13, 198, 198, 464, 3290]


def find_real_gpt2() -> Path | None:
    env = os.environ.get("MINIGPT_GPT2_DIR")
    if env:
        return Path(env)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download("gpt2", allow_patterns=["*.json", "*.safetensors", "*.txt"],
                                      local_files_only=True))
    except Exception:
        return None


REAL = find_real_gpt2()
pytestmark = pytest.mark.skipif(
    REAL is None or not (REAL / "model.safetensors").is_file(),
    reason="the real gpt2 checkpoint is not on this machine (set $MINIGPT_GPT2_DIR or fill the HF cache)",
)


@pytest.fixture(scope="module")
def model():
    return GPT.from_pretrained(str(REAL))


@pytest.fixture(scope="module")
def tok(tokenizer_files):
    has_vocab = (REAL / "vocab.json").is_file() and (REAL / "merges.txt").is_file()
    return Tokenizer.from_pretrained(REAL) if has_vocab else Tokenizer(*tokenizer_files)


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


@torch.no_grad()
def test_greedy_the_dog(model):
    ids = model.generate(torch.tensor([[464, 3290]]), 18)
    assert ids[0].tolist() == THE_DOG_GREEDY


@torch.no_grad()
def test_hello_world_loss(model, tok):
    ids = torch.tensor([tok.encode("<|endoftext|>Hello world!", allow_special=True)])
    logits = model(ids)
    loss = F.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert abs(loss.item() - 5.3319) <= 1e-3


@torch.no_grad()
def test_logits_match_transformers(model):
    transformers = pytest.importorskip("transformers")
    ref = transformers.GPT2LMHeadModel.from_pretrained(str(REAL)).eval()
    ids = torch.tensor([THE_DOG_GREEDY])
    assert (model(ids) - ref(ids).logits).abs().max().item() <= 1e-4
