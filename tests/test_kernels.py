"""Weight layouts chosen by measurement: same names, shapes, values and outputs whatever layout wins."""

import pytest
import torch

from minigpt import GPT
from minigpt.kernels import KERNELS, choose_layouts_, matmul_in_out, relayout, stored_out_in
from minigpt.kernels import Conv1D


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_kernel_computes_the_same_product(dtype):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 257, generator=gen).to(dtype)  # an odd width, like the LM head
    x = torch.randn(3, 5, 96, generator=gen).to(dtype)
    expected = (x.double() @ w.double())
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    for kernel in KERNELS:
        stored = relayout(w.clone(), kernel)
        assert stored.shape == w.shape and torch.equal(stored, w)
        assert stored_out_in(stored) == (kernel == "out_in")
        out = matmul_in_out(x, stored, split=kernel == "in_out_split")
        assert torch.allclose(out.double(), expected, atol=tolerance), kernel


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chosen_layouts_keep_names_shapes_values_and_outputs(tiny_dir, dtype):
    plain = GPT.from_pretrained(str(tiny_dir), dtype=dtype, layouts="as-is")
    tuned = GPT.from_pretrained(str(tiny_dir), dtype=dtype)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in tuned.state_dict().items()}
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in tuned.state_dict().items())
    for module in tuned.modules():
        if isinstance(module, Conv1D):
            w = module.weight
            assert w.untyped_storage().nbytes() == w.numel() * w.element_size()  # one copy, re-laid in place
    chosen = choose_layouts_(tuned)  # idempotent: measured already, nothing moves
    assert set(chosen) >= {"h.0.attn.c_attn.weight", "wte.weight"} and set(chosen.values()) <= set(KERNELS)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    assert torch.allclose(tuned(ids).float(), plain(ids).float(), atol=tolerance)
    if dtype == torch.float32:
        assert torch.equal(tuned.generate(ids, 10), plain.generate(ids, 10))


def test_an_out_in_layout_trains_and_saves_like_the_checkpoint(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    model = GPT.from_pretrained(str(tiny_dir), layouts="as-is")
    for module in model.modules():  # force the [out, in] storage everywhere
        if isinstance(module, Conv1D):
            module.weight = torch.nn.Parameter(relayout(module.weight.data, "out_in"))
    model.wte.weight = torch.nn.Parameter(relayout(model.wte.weight.data.t(), "out_in").t())
    model.train()
    ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(2))
    loss = model(ids[:, :-1]).flatten(0, 1).log_softmax(-1).gather(1, ids[:, 1:].reshape(-1, 1)).mean().neg()
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    model.save_pretrained(str(tmp_path / "out"))
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(saved[f"transformer.{k}"], v) for k, v in model.state_dict().items())
