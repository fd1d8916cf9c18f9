"""Parity of minigpt's GPT with transformers' GPT2LMHeadModel on random-weight checkpoints."""

import pytest
import torch

from helpers import make_hf_model

from minigpt import GPT, GPTConfig

TOL = 1e-4


def random_ids(vocab: int, batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_gpt2_shape_logits_match_transformers(gpt2_shape_hf, gpt2_shape, device):
    ids = random_ids(50257, batch=2, length=64, seed=0)
    ref = gpt2_shape_hf.to(device)(ids.to(device)).logits
    ours = gpt2_shape.to(device)(ids.to(device))
    assert ours.shape == (2, 64, 50257)
    assert (ours - ref).abs().max().item() <= TOL


@torch.no_grad()
def test_full_1024_token_context_matches_transformers(gpt2_shape_hf, gpt2_shape, device):
    ids = random_ids(50257, batch=1, length=1024, seed=1).to(device)
    ref = gpt2_shape_hf.to(device)(ids).logits
    ours = gpt2_shape.to(device)(ids)
    assert (ours - ref).abs().max().item() <= TOL


@torch.no_grad()
def test_other_head_layout_matches_transformers(tmp_path, device):
    # 16 heads of 64 (the gpt2-medium layout), 2 layers to keep it quick.
    hf = make_hf_model(seed=3, n_layer=2, n_head=16, n_embd=1024, n_positions=256, vocab_size=5000).to(device)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), device=device)
    ids = random_ids(5000, batch=3, length=96, seed=2).to(device)
    assert (model(ids) - hf(ids).logits).abs().max().item() <= TOL


@torch.no_grad()
def test_left_padded_row_equals_unpadded_row(gpt2_shape, gpt2_shape_hf, device):
    model = gpt2_shape.to(device)
    ids = random_ids(50257, batch=2, length=64, seed=4).to(device)
    mask = torch.ones_like(ids)
    mask[0, :17] = 0  # row 0 is a 47-token prompt, left-padded by 17
    padded = model(ids, attention_mask=mask)
    alone = model(ids[:1, 17:])
    assert (padded[0, 17:] - alone[0]).abs().max().item() <= TOL
    assert torch.isfinite(padded).all(), "padded positions must not produce NaN"
    # and the full row is untouched by the other row's padding
    assert (padded[1] - model(ids[1:])[0]).abs().max().item() <= TOL
    # transformers agrees when given the same position ids
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = gpt2_shape_hf.to(device)(ids, attention_mask=mask, position_ids=positions).logits
    assert (padded[0, 17:] - ref[0, 17:]).abs().max().item() <= TOL


@torch.no_grad()
def test_every_layout_loads_to_bit_identical_logits(tiny_layouts, tiny_hf):
    ids = random_ids(1000, batch=2, length=64, seed=5)
    outputs = {name: GPT.from_pretrained(str(path))(ids) for name, path in tiny_layouts.items()}
    first = next(iter(outputs.values()))
    for name, logits in outputs.items():
        assert torch.equal(logits, first), f"layout {name} differs"
    assert (first - tiny_hf(ids).logits).abs().max().item() <= TOL


def test_model_uses_huggingface_parameter_names(tiny_dir):
    names = set(GPT.from_pretrained(str(tiny_dir)).state_dict())
    for expected in ("wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.0.attn.c_attn.weight",
                     "h.0.attn.c_proj.bias", "h.1.ln_2.bias", "h.1.mlp.c_fc.weight", "h.1.mlp.c_proj.weight",
                     "ln_f.bias"):
        assert expected in names
    assert not any("lm_head" in n or n.endswith(".attn.bias") for n in names)


@torch.no_grad()
def test_lm_head_is_tied_to_wte(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = random_ids(1000, 1, 8, seed=6)
    before = model(ids)
    model.wte.weight[7].add_(1.0)  # changes both the embedding of token 7 and its output logit
    after = model(ids)
    assert not torch.equal(before[..., 7], after[..., 7])


@torch.no_grad()
def test_bf16_load_is_close_to_fp32(tiny_dir):
    fp32 = GPT.from_pretrained(str(tiny_dir))
    bf16 = GPT.from_pretrained(str(tiny_dir), dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    ids = random_ids(1000, 2, 32, seed=7)
    ref, low = fp32(ids), bf16(ids).float()
    assert torch.isfinite(low).all()
    # bf16 keeps ~3 significant digits: compare relative to the logits' spread, and the argmax mostly agrees
    assert (low - ref).abs().max().item() <= 0.1 * ref.abs().max().item()
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.9


def test_input_longer_than_context_is_refused(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_config_matches_checkpoint(tiny_dir, tiny_hf):
    config = GPT.from_pretrained(str(tiny_dir)).config
    assert config == GPTConfig(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=1000, eos_token_id=0)


@torch.no_grad()
@pytest.mark.parametrize("variant", ["measured", "as-is", "onednn", "bf16", "int8"])
def test_the_decode_step_equals_forward_with_a_cache_bit_for_bit(tiny_dir, variant):
    """`Transformer.decode` (what generation's steps run) computes forward's numbers exactly: logits and cache, on a
    left-padded batch, for each kernel and precision."""
    from minigpt.inference.decode import prefill
    from minigpt.kernels import onednn_available, use_kernel_

    if variant == "onednn" and not onednn_available():
        pytest.skip("this torch has no oneDNN")
    kwargs = {"as-is": {"layouts": "as-is"}, "bf16": {"dtype": torch.bfloat16}, "int8": {"quantize": "int8"}}
    model = GPT.from_pretrained(str(tiny_dir), **kwargs.get(variant, {}))
    if variant == "onednn":
        use_kernel_(model, "onednn")  # its fused bias and residual additions
    ids = random_ids(model.config.vocab_size, batch=3, length=9, seed=8)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    _, fast = prefill(model, ids, mask, 16)
    _, plain = prefill(model, ids, mask, 16)
    tokens = random_ids(model.config.vocab_size, batch=3, length=6, seed=9)
    for step in range(tokens.shape[1]):
        for state in (fast, plain):
            state.slot_valid[:, state.slot] = True
        got = model.decode(tokens[:, step], fast.next_position, fast.cache, fast.slot, fast.slot_valid)
        want = model(tokens[:, step, None], plain.slot_valid, position_ids=plain.next_position[:, None],
                     cache=plain.cache, cache_slots=torch.tensor([plain.slot]), last_only=True)[:, -1]
        assert torch.equal(got, want), f"step {step}: max difference {(got - want).abs().max().item()}"
        for state in (fast, plain):
            state.next_position += 1
            state.slot += 1
    assert all(torch.equal(a, b) for a, b in zip(fast.cache.keys + fast.cache.values,
                                                 plain.cache.keys + plain.cache.values))
