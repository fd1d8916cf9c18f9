import os
import tempfile
from pathlib import Path

import pytest
import torch

from helpers import copy_tokenizer_files, locate_tokenizer_files, make_hf_model, save_layouts

from minigpt import GPT, Tokenizer
from minigpt.train.env import keep_freed_memory

# Tests never wait on the network (the tokenizer lookup below may download 1.5 MB once, in a child process,
# unless the user had set HF_HUB_OFFLINE themselves).
USER_OFFLINE = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Measured kernel choices go to a file of this test session, never the user's ~/.cache (subprocesses inherit it).
os.environ.setdefault("MINIGPT_KERNEL_CACHE", os.path.join(tempfile.mkdtemp(prefix="minigpt-kernels-"), "k.json"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# Freed blocks of hundreds of MB (a 50,257-token head's logits and gradients) stay mapped for reuse, as the trainers
# keep them (minigpt.train.env.keep_freed_memory), instead of being faulted in again by the next test.
keep_freed_memory()


def pytest_addoption(parser):
    parser.addoption("--device", default=os.environ.get("MINIGPT_TEST_DEVICE", "cpu"),
                     help="device for the parity tests (cpu or cuda); also $MINIGPT_TEST_DEVICE")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


@pytest.fixture(scope="session")
def tiny_hf():
    """A 2-layer, 4-head, 64-wide random reference model with a 1000-token vocab."""
    return make_hf_model(seed=1)


@pytest.fixture(scope="session")
def tiny_layouts(tiny_hf, tmp_path_factory) -> dict[str, Path]:
    return save_layouts(tiny_hf, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_dir(tiny_layouts) -> Path:
    return tiny_layouts["hub"]


@pytest.fixture(scope="session")
def gpt2_shape_hf():
    """A random model of the full gpt2 shape: 12 layers, 12 heads, 768 wide, 1024 positions, vocab 50257."""
    return make_hf_model(seed=2, n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257,
                         bos_token_id=50256, eos_token_id=50256)


@pytest.fixture(scope="session")
def gpt2_shape_dir(gpt2_shape_hf, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gpt2shape")
    gpt2_shape_hf.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def gpt2_shape(gpt2_shape_dir) -> GPT:
    return GPT.from_pretrained(str(gpt2_shape_dir))


@pytest.fixture(scope="session")
def tokenizer_files() -> tuple[Path, Path]:
    """GPT-2's (vocab, merges) files: $MINIGPT_TOKENIZER_DIR, ../shared, the HF cache, or a download."""
    try:
        return locate_tokenizer_files(allow_download=not USER_OFFLINE)
    except LookupError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def tokenizer_path(tokenizer_files, tmp_path_factory) -> Path:
    """A directory holding GPT-2's vocab files under the hub's names."""
    return copy_tokenizer_files(tokenizer_files, tmp_path_factory.mktemp("gpt2tok"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_files) -> Tokenizer:
    return Tokenizer(*tokenizer_files)


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory, tokenizer_files) -> Path:
    """A small random model over GPT-2's real vocabulary, with the tokenizer files beside it (hub names)."""
    directory = tmp_path_factory.mktemp("textmodel")
    hf = make_hf_model(seed=5, n_layer=2, n_head=4, n_embd=64, n_positions=256, vocab_size=50257,
                       bos_token_id=50256, eos_token_id=50256)
    hf.save_pretrained(directory)
    return copy_tokenizer_files(tokenizer_files, directory)


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    from helpers import synthetic_instructions, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("sftdata") / "train.jsonl", synthetic_instructions(8))


@pytest.fixture(scope="session")
def sft_run(text_model_dir, sft_data, tmp_path_factory):
    """The tiny text model fine-tuned to overfit 8 synthetic demonstrations: (TrainResult, the trained GPT)."""
    from minigpt.train import TrainConfig, train

    out = tmp_path_factory.mktemp("sftrun") / "out"
    config = TrainConfig(data=str(sft_data), out=str(out), model=str(text_model_dir), eval_fraction=0,
                         batch_size=8, max_steps=80, lr=3e-3, warmup_steps=5, seed=0)
    result = train(config, progress=False)
    return result
