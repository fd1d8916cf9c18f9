"""Test helpers: random-weight reference models from transformers, saved in each checkpoint layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_ENV = "MINIGPT_TOKENIZER_DIR"


def tokenizer_dir() -> Path:
    """The GPT-2 BPE files: $MINIGPT_TOKENIZER_DIR, else ../shared/gpt2-tokenizer beside the repo."""
    return Path(os.environ.get(TOKENIZER_ENV) or REPO_ROOT.parent / "shared" / "gpt2-tokenizer")


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
