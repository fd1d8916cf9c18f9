"""Test helpers: random-weight reference models from transformers, saved in each checkpoint layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the revision fake hub-cache entries are filed under


def run_script(*args, env_extra: dict | None = None, timeout: int = 300):
    """Run `python ARGS...` as a user would (offline, one thread, no MINIGPT_DEBUG); the CompletedProcess."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("MINIGPT_DEBUG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)
TOKENIZER_ENV = "MINIGPT_TOKENIZER_DIR"


SHARED_TOKENIZER = REPO_ROOT.parent / "shared" / "gpt2-tokenizer"
TOKENIZER_WAYS = (f"set ${TOKENIZER_ENV} to a directory with vocab.json + merges.txt (or encoder.json + vocab.bpe); "
                  f"or put those files in {SHARED_TOKENIZER}; or have gpt2's vocab.json + merges.txt in the "
                  "HuggingFace cache (one online run of `minigpt-generate` leaves them there); or run the tests "
                  "once online, which downloads them (1.5 MB)")


def locate_tokenizer_files(*, allow_download: bool) -> tuple[Path, Path]:
    """GPT-2's BPE files (vocab, merges), looked for in this order: $MINIGPT_TOKENIZER_DIR, ../shared/gpt2-tokenizer
    beside the repo, the HuggingFace cache (`gpt2`'s vocab.json + merges.txt), and, when `allow_download` and the
    hub answers, a download of those two files into that cache. LookupError lists the four ways."""
    from minigpt.tokenizer import find_tokenizer_files

    tried = []
    for directory in (os.environ.get(TOKENIZER_ENV), SHARED_TOKENIZER):
        if directory:
            found = find_tokenizer_files(Path(directory))
            if found:
                return found
            tried.append(str(directory))
    found = cached_gpt2_vocab()
    if found is None and allow_download:
        download_gpt2_vocab()
        found = cached_gpt2_vocab()
    if found is not None:
        return found
    raise LookupError(f"GPT-2 tokenizer files not found (looked in {', '.join(tried) or 'no directory'}, the "
                      f"HuggingFace cache{', and the hub' if allow_download else ''}). To run the tests, "
                      f"{TOKENIZER_WAYS}.")


def cached_gpt2_vocab() -> tuple[Path, Path] | None:
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache("gpt2", name) for name in ("vocab.json", "merges.txt")]
    return tuple(Path(p) for p in paths) if all(isinstance(p, str) for p in paths) else None


def download_gpt2_vocab() -> None:
    """Fetch gpt2's vocab.json + merges.txt into the HuggingFace cache if the hub answers (a child process: the
    suite itself runs with HF_HUB_OFFLINE=1)."""
    import subprocess
    import sys

    from minigpt.hub import can_connect, hub_endpoint, probe_address

    if not can_connect(*probe_address(hub_endpoint()), timeout=2.0):
        return
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = "from huggingface_hub import hf_hub_download as d; d('gpt2', 'vocab.json'); d('gpt2', 'merges.txt')"
    subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300)


def copy_tokenizer_files(files: tuple[Path, Path], directory: Path) -> Path:
    """Copy GPT-2's vocab files into `directory` under the hub's names (vocab.json, merges.txt)."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(files[0], directory / "vocab.json")
    shutil.copy(files[1], directory / "merges.txt")
    return directory


def hf_config(**overrides):
    from transformers import GPT2Config

    base = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=1000,
                attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    base.update(overrides)
    return GPT2Config(**base)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give EVERY tensor random values, LayerNorm gains and biases included, so a swapped tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            p.copy_(1.0 + 0.2 * noise)
        elif p.ndim == 1:
            p.copy_(0.05 * noise)
        elif "wte" in name or "wpe" in name:
            p.copy_(0.1 * noise)
        else:
            p.copy_(0.04 * noise)
    return model


def make_hf_model(seed: int = 0, **overrides):
    """A random-weight transformers GPT2LMHeadModel in eval mode (fp32, eager attention: the reference)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(hf_config(**overrides)).eval()
    return randomize_(model, seed)


def bare_hub_state(hf_model) -> dict[str, torch.Tensor]:
    """The hub gpt2 file's layout: bare keys, no lm_head, plus h.N.attn.bias mask buffers [1,1,P,P]."""
    cfg = hf_model.config
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf_model.state_dict().items()
             if not k.startswith("lm_head")}
    mask = torch.tril(torch.ones(cfg.n_positions, cfg.n_positions)).view(1, 1, cfg.n_positions, cfg.n_positions)
    for i in range(cfg.n_layer):
        state[f"h.{i}.attn.bias"] = mask.clone()
    return state


def save_config(hf_model, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_model.config.to_dict(), indent=2))


def save_layouts(hf_model, root: Path) -> dict[str, Path]:
    """Write the model in every layout the loader handles; return {layout name: path to load}."""
    layouts: dict[str, Path] = {}
    # 1. the hub's gpt2 model.safetensors: bare keys + mask buffers, no lm_head
    hub = root / "hub"
    save_config(hf_model, hub)
    save_file(bare_hub_state(hf_model), str(hub / "model.safetensors"), metadata={"format": "pt"})
    layouts["hub"] = hub
    # 2. what transformers' save_pretrained writes today (transformer.-prefixed keys)
    hf_dir = root / "transformers"
    hf_model.save_pretrained(hf_dir)
    layouts["transformers"] = hf_dir
    # 3. transformer.-prefixed keys with an explicit lm_head.weight
    with_head = root / "with_lm_head"
    save_config(hf_model, with_head)
    state = {k: v.clone().contiguous() for k, v in hf_model.state_dict().items()}
    state["lm_head.weight"] = state["transformer.wte.weight"].clone()
    save_file(state, str(with_head / "model.safetensors"), metadata={"format": "pt"})
    layouts["with_lm_head"] = with_head
    # 4. sharded: model.safetensors.index.json + several shards
    sharded = root / "sharded"
    hf_model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    layouts["sharded"] = sharded
    # 5. a single .safetensors file with a sibling config.json
    layouts["single_file"] = hub / "model.safetensors"
    return layouts


WORDS = ("apple river stone cloud piano garden silver window rabbit orange candle forest marble tiger "
         "lemon violin harbor meadow copper falcon").split()


def synthetic_instructions(n: int, seed: int = 0) -> list[dict]:
    """n made-up demonstrations: an instruction naming three words, a response of four other words."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = rng.sample(WORDS, 7)
        records.append({"prompt": f"Task {i}: list words after {' '.join(words[:3])}.",
                        "response": " ".join(words[3:])})
    return records


def write_jsonl(path: Path, records: list, raw_lines: dict[int, str] | None = None) -> Path:
    """Write records one per line; raw_lines {line number: text} puts literal (bad) lines at those numbers."""
    lines = [json.dumps(r) for r in records]
    for number, text in sorted((raw_lines or {}).items()):
        lines.insert(number - 1, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_WORDS = WORDS[:10]
BAD_WORDS = WORDS[10:]


def synthetic_preferences(n: int, seed: int = 0, *, ranked_every: int = 4) -> list[dict]:
    """n preference records with a learnable signal: a response of three words from GOOD_WORDS beats one of
    three words from BAD_WORDS. Every `ranked_every`-th record is a K=3 ranking (good > mixed > bad)."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        prompt = f"Question {rng.randint(0, 999)}: name three things."
        good, bad = " ".join(rng.sample(GOOD_WORDS, 3)), " ".join(rng.sample(BAD_WORDS, 3))
        if ranked_every and i % ranked_every == 0:
            mixed = " ".join(rng.sample(GOOD_WORDS, 2) + rng.sample(BAD_WORDS, 1))
            records.append({"prompt": prompt, "ranked": [good, mixed, bad]})
        else:
            records.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return records


def fill_hf_cache(hf_home: Path, repo: str, source: Path) -> Path:
    """Put `source`'s files into the HF cache layout as repo `repo` at revision main."""
    import shutil

    root = hf_home / "hub" / f"models--{repo}"
    snapshot = root / "snapshots" / HUB_COMMIT
    shutil.copytree(source, snapshot)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(HUB_COMMIT)
    return snapshot
