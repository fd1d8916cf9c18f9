"""Loader behaviour on good and bad checkpoints: every failure is a CheckpointError naming file and keys."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import bare_hub_state

from minigpt import GPT, CheckpointError, GPTConfig


def write_variant(src_dir, dst_dir, edit):
    """Copy the hub layout and apply edit(state) -> state to its tensors."""
    dst_dir.mkdir()
    shutil.copy(src_dir / "config.json", dst_dir / "config.json")
    state = edit(load_file(str(src_dir / "model.safetensors")))
    save_file(state, str(dst_dir / "model.safetensors"))
    return dst_dir


def test_missing_tensor_is_named(tiny_dir, tmp_path):
    def drop(state):
        del state["h.1.mlp.c_fc.bias"]
        return state

    bad = write_variant(tiny_dir, tmp_path / "bad", drop)
    with pytest.raises(CheckpointError, match=r"missing tensors: h\.1\.mlp\.c_fc\.bias") as info:
        GPT.from_pretrained(str(bad))
    assert "model.safetensors" in str(info.value)


def test_unexpected_tensor_is_named(tiny_dir, tmp_path):
    def add(state):
        state["h.0.attn.q_proj.weight"] = torch.zeros(4)
        return state

    bad = write_variant(tiny_dir, tmp_path / "bad", add)
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*h\.0\.attn\.q_proj\.weight"):
        GPT.from_pretrained(str(bad))


def test_shape_mismatch_names_key_and_shapes(tiny_dir, tmp_path):
    def shrink(state):
        state["wpe.weight"] = state["wpe.weight"][:100].contiguous()
        return state

    bad = write_variant(tiny_dir, tmp_path / "bad", shrink)
    with pytest.raises(CheckpointError, match=r"'wpe\.weight' has shape \[100, 64\] but the config needs \[128, 64\]"):
        GPT.from_pretrained(str(bad))


def test_config_that_disagrees_with_weights(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["n_embd"] = 128
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '[\w.]+' has shape \[[\d, ]+\] but the config needs"):
        GPT.from_pretrained(str(bad))


def test_transposed_conv1d_weight_is_caught(tiny_dir, tmp_path):
    def transpose(state):
        state["h.0.attn.c_attn.weight"] = state["h.0.attn.c_attn.weight"].t().contiguous()
        return state

    bad = write_variant(tiny_dir, tmp_path / "bad", transpose)
    with pytest.raises(CheckpointError, match=r"'h\.0\.attn\.c_attn\.weight' has shape \[192, 64\] but the config needs \[64, 192\]"):
        GPT.from_pretrained(str(bad))


def test_truncated_file(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        GPT.from_pretrained(str(bad))


def test_garbage_file(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated"):
        GPT.from_pretrained(str(bad))


def test_missing_shard_is_named(tiny_layouts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_layouts["sharded"], bad)
    victim = sorted(bad.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"shard files missing: .*{victim.name}"):
        GPT.from_pretrained(str(bad))


def test_nonexistent_paths(tmp_path):
    for path in (tmp_path / "nope", "./nope/model.safetensors", "/no/such/dir"):
        with pytest.raises(CheckpointError, match="does not exist"):
            GPT.from_pretrained(str(path))


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(GPTConfig().to_hf_dict()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        GPT.from_pretrained(str(tmp_path))


def test_directory_without_config(tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        GPT.from_pretrained(str(tmp_path))


def test_single_file_with_preset_config_name(tiny_dir, tmp_path):
    lone = tmp_path / "weights.safetensors"
    shutil.copy(tiny_dir / "model.safetensors", lone)
    with pytest.raises(CheckpointError, match="no config.json beside it"):
        GPT.from_pretrained(str(lone))
    # the gpt2 preset's shapes do not fit this tiny model: the loader says which tensor disagrees
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: tensor .* has shape \[192\] but the config needs \[2304\]"):
        GPT.from_pretrained(str(lone), config="gpt2")
    config = GPTConfig(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=1000)
    assert GPT.from_pretrained(str(lone), config=config).config == config


def test_unsupported_config_field_is_named(tiny_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    config["scale_attn_by_inverse_layer_idx"] = True
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx"):
        GPT.from_pretrained(str(bad))


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for repo in ("gpt2", "someone/not-a-model"):
        with pytest.raises(CheckpointError, match=f"cannot fetch '{repo}' from the HuggingFace hub: offline"):
            GPT.from_pretrained(repo)


def test_pickle_checkpoint_refused_unless_opted_in(tiny_dir, tiny_hf, tmp_path):
    shutil.copy(tiny_dir / "config.json", tmp_path / "config.json")
    torch.save(tiny_hf.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle checkpoint.*safetensors only"):
        GPT.from_pretrained(str(tmp_path))
    model = GPT.from_pretrained(str(tmp_path), allow_pickle=True)
    ids = torch.arange(10)[None]
    assert torch.equal(model(ids), GPT.from_pretrained(str(tiny_dir))(ids))


def test_no_random_init_and_no_meta_tensors_left(tiny_dir, monkeypatch):
    def forbidden(self):
        if not self.weight.is_meta:
            raise AssertionError("a real tensor was randomly initialised during loading")

    monkeypatch.setattr(torch.nn.Embedding, "reset_parameters", forbidden)
    monkeypatch.setattr(torch.nn.LayerNorm, "reset_parameters", forbidden)
    model = GPT.from_pretrained(str(tiny_dir))
    assert not any(t.is_meta for t in model.state_dict().values())


def test_device_and_dtype_arguments(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir), device="cpu", dtype=torch.float16)
    assert model.dtype == torch.float16 and model.device.type == "cpu"
    assert all(p.dtype == torch.float16 for p in model.parameters())
    assert not model.training


def test_hub_layout_has_mask_buffers(tiny_hf):
    # guard the fixture itself: the hub layout really carries the attn.bias buffers the loader must ignore
    state = bare_hub_state(tiny_hf)
    assert state["h.0.attn.bias"].shape == (1, 1, 128, 128)
    assert "lm_head.weight" not in state and "wte.weight" in state


def mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from `path` (from /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith(str(path)):
            start, end = line.split()[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_zero_copy_load_maps_the_file_and_never_writes_it(tiny_dir, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, directory)
    before = (directory / "model.safetensors").read_bytes()
    model = GPT.from_pretrained(str(directory), layouts="as-is")
    ranges = mapped_ranges((directory / "model.safetensors").resolve())
    assert ranges, "the checkpoint file is not memory-mapped"
    inside = {name: any(a <= t.data_ptr() < b for a, b in ranges) for name, t in model.state_dict().items()}
    assert all(inside.values()), [name for name, ok in inside.items() if not ok]  # every tensor: no copy
    with torch.no_grad():  # the map is private (copy-on-write): training in place must not touch the file
        for p in model.parameters():
            p.add_(1.0)
    assert (directory / "model.safetensors").read_bytes() == before
    half = GPT.from_pretrained(str(directory), dtype=torch.float16, layouts="as-is")  # a dtype change copies
    assert not any(a <= half.h[0].mlp.c_fc.weight.data_ptr() < b for a, b in ranges)
