"""int8 weight-only quantization: the arithmetic, every kernel against the dequantized product, and the accuracy
of a quantized gpt2-shape model against its fp32 self (measured, not assumed)."""

import pytest
import torch

from minigpt import GPT, CheckpointError
from minigpt.kernels import Conv1D
from minigpt.quantize import Int8Linear, int8_kernel_available, quantize_, quantize_per_channel


def test_per_channel_quantization_rounds_each_row_on_its_own_scale():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=gen) * torch.tensor([1e-3, 0.02, 1.0, 5.0, 0.3, 0.0])[:, None]  # row scales
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (6,) and scale.dtype == torch.bfloat16
    assert torch.equal(q[5], torch.zeros(40, dtype=torch.int8))  # an all-zero row stays zero, no NaN
    rows = slice(0, 5)
    assert (q[rows].abs().amax(dim=1) >= 126).all()  # the max lands on the last step (the bf16 scale rounds)
    assert torch.equal(scale[rows], (w[rows].abs().amax(dim=1) / 127).to(torch.bfloat16))
    error = (q.float() * scale.float()[:, None] - w).abs()
    assert (error[rows] <= 0.51 * scale.float()[rows, None]).all()  # round to nearest: about half a step


def scheme_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The scheme, written out: bf16 activations x int8 in float64, times the bf16 scale, rounded to bf16."""
    products = x.to(torch.bfloat16).double() @ q.double().t() * scale.double()
    return products.to(torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_int8_paths_compute_the_scheme(dtype):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(96, 257, generator=gen).to(dtype)  # [in, out], an odd width like the LM head
    bias = torch.randn(257, generator=gen).to(dtype)
    x = torch.randn(3, 5, 96, generator=gen).to(dtype)
    q, scale = quantize_per_channel(w.t())
    expected = scheme_reference(x.reshape(15, 96), q, scale).reshape(3, 5, 257)
    assert int8_kernel_available(torch.device("cpu"))  # the CPU build has the int8 kernel; it is exercised here
    for kernel in (True, False):
        out = Int8Linear(q, scale, bias, kernel=kernel)(x)
        assert out.shape == (3, 5, 257) and out.dtype == dtype
        core = Int8Linear(q, scale, None, kernel=kernel)(x).float()
        assert torch.equal(out, (core.to(dtype) + bias))
        # the same function up to fp32 summation order: at most one bf16 step apart, and rarely
        step = expected.float().abs() * 2**-7 + 1e-30
        assert ((core - expected.float()).abs() <= step).all(), kernel
        assert (core != expected.float()).float().mean() < 0.01, kernel
    full = x.double() @ (q.double() * scale.double()[:, None]).t() + bias.double()
    assert relative_l2(Int8Linear.from_in_out(w, bias)(x), full) < 0.006  # bf16's 8 bits, nothing worse


def test_a_row_is_computed_alike_alone_and_in_any_batch():
    """One path for every row count: no kernel switch at some number of rows."""
    gen = torch.Generator().manual_seed(2)
    layer = Int8Linear.from_in_out(torch.randn(64, 300, generator=gen), torch.randn(300, generator=gen))
    rows = torch.randn(97, 64, generator=gen)
    together = layer(rows)
    for size in (1, 2, 5, 32, 97):
        assert torch.equal(torch.cat([layer(rows[i:i + size]) for i in range(0, 97, size)]), together), size


def relative_l2(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).norm() / expected.norm()).item()


@torch.no_grad()
def test_quantized_gpt2_shape_is_close_to_fp32_and_a_quarter_of_the_bytes(gpt2_shape, gpt2_shape_dir):
    model = GPT.from_pretrained(str(gpt2_shape_dir), quantize="int8")
    assert model.quantized and not gpt2_shape.quantized
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    int8 = {k: v for k, v in model.state_dict().items() if v.dtype == torch.int8}
    assert len(int8) == 4 * 12 + 1  # every projection of the 12 blocks, and the LM head
    projections = sum(m.weight.numel() for m in gpt2_shape.modules() if isinstance(m, Conv1D))
    assert sum(v.numel() for v in int8.values()) == projections + gpt2_shape.wte.weight.numel()
    assert all(v.element_size() == 1 for v in int8.values())
    assert torch.equal(model.wte.weight, gpt2_shape.wte.weight)  # the embeddings stay as loaded

    ids = torch.randint(0, 50257, (2, 48), generator=torch.Generator().manual_seed(3))
    ref, got = gpt2_shape(ids), model(ids)
    rel_l2 = relative_l2(got, ref.double())
    assert rel_l2 <= 0.03, rel_l2  # the bar on the random gpt2-shape checkpoint
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.8, agree  # next-token argmax agreement (README reports the measured value)
    # cached decoding equals the quantized model's own uncached greedy, token for token
    prompt = ids[:1, :8]
    out = model.generate(prompt, 12)
    uncached = prompt
    for _ in range(12):
        uncached = torch.cat([uncached, model(uncached)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, uncached)


@torch.no_grad()
def test_quantized_bf16_model_and_ragged_batches(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir), dtype=torch.bfloat16, quantize="int8")
    assert model.dtype == torch.bfloat16 and model(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16
    fp32 = GPT.from_pretrained(str(tiny_dir), quantize="int8")
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[11, 12, 13]])
    batch = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    out = fp32.generate(batch, 6, attention_mask=mask)
    assert torch.equal(out[0, 5:], fp32.generate(a, 6)[0, 5:])
    assert torch.equal(out[1, 5:], fp32.generate(b, 6)[0, 3:])


def test_quantized_models_refuse_to_save_and_bad_choices_are_named(tiny_dir, tmp_path):
    model = GPT.from_pretrained(str(tiny_dir), quantize="int8")
    with pytest.raises(CheckpointError, match="int8-quantized model cannot be saved"):
        model.save_pretrained(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="quantize='int4'"):
        GPT.from_pretrained(str(tiny_dir), quantize="int4")
    assert quantize_(model) is model  # quantizing twice is a no-op
    assert not any(p.requires_grad for p in model.parameters())


@torch.no_grad()
def test_compiled_int8_decoding_equals_eager_int8(tiny_dir):
    from minigpt.inference.fast import compile_decode

    eager = GPT.from_pretrained(str(tiny_dir), quantize="int8")
    compiled = compile_decode(GPT.from_pretrained(str(tiny_dir), quantize="int8"))
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(4))
    assert torch.equal(compiled.generate(ids, 12), eager.generate(ids, 12))
