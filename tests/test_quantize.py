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
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (6,)
    assert torch.equal(q[5], torch.zeros(40, dtype=torch.int8))  # an all-zero row stays zero, no NaN
    rows = slice(0, 5)
    assert torch.equal(q[rows].abs().amax(dim=1), torch.full((5,), 127, dtype=torch.int8))  # the max hits 127
    assert torch.allclose(scale[rows], w[rows].abs().amax(dim=1) / 127)
    error = (q.float() * scale[:, None] - w).abs()
    assert (error[rows] <= scale[rows, None] / 2 + 1e-9).all()  # round to nearest: at most half a step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_int8_path_computes_the_dequantized_product(dtype):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(96, 257, generator=gen).to(dtype)  # [in, out], an odd width like the LM head
    bias = torch.randn(257, generator=gen).to(dtype)
    x = torch.randn(3, 5, 96, generator=gen).to(dtype)
    q, scale = quantize_per_channel(w.t())
    expected = x.double() @ (q.double() * scale.double()[:, None]).t() + bias.double()  # [3, 5, 257]
    computes = [None] + [d for d in (dtype, torch.bfloat16) if int8_kernel_available(torch.device("cpu"), d)]
    assert torch.bfloat16 in computes  # the CPU build has the int8 kernel; it must be exercised here
    for compute in dict.fromkeys(computes):
        for gemm_rows in (float("inf"), 4):  # 15 rows: the kernel, or dequantize + GEMM
            layer = Int8Linear(q, scale, bias, compute_dtype=compute, gemm_rows=gemm_rows)
            out = layer(x)
            assert out.shape == (3, 5, 257) and out.dtype == dtype
            if compute in (None, torch.float32) and dtype == torch.float32:
                assert torch.allclose(out.double(), expected, atol=1e-4), (compute, gemm_rows)
            else:  # bf16 activations and output: 8 significant bits, so ~0.4% of each value
                assert relative_l2(out, expected) < 0.006, (compute, gemm_rows)
    layer = Int8Linear.from_in_out(w, bias)  # the measured choice is one of those
    assert relative_l2(layer(x), expected) < 0.006


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
