"""Weight layouts chosen by measurement: same names, shapes, values and outputs whatever layout wins."""

import json

import pytest
import torch

from minigpt import GPT
from minigpt.config import GPTConfig
from minigpt.kernels import KERNELS, choose_layouts_, matmul_in_out, onednn_available, relayout, stored_out_in
from minigpt.kernels import Conv1D
from minigpt.machine import ChoiceStore, machine_id


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
        assert stored_out_in(stored) == (kernel in ("out_in", "onednn"))
        out = matmul_in_out(x, stored, kernel)
        assert torch.allclose(out.double(), expected, atol=tolerance), kernel


@pytest.mark.parametrize("out_in", [False, True])
def test_the_compiled_path_s_opaque_product_has_exact_gradients(out_in):
    """Under torch.compile on a CPU the product is one custom op; a compiled training step backpropagates through
    its registered formula (dx = dy w^T, dw = x^T dy): checked against finite differences in float64, for both
    storages, and by torch's own op checks (fake tensor, autograd registration)."""
    from minigpt.kernels import _opaque_matmul_in_out

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, dtype=torch.float64, generator=gen).requires_grad_(True)
    w = torch.randn(8, 5, dtype=torch.float64, generator=gen)
    w = (relayout(w, "out_in") if out_in else w).requires_grad_(True)
    assert stored_out_in(w) == out_in
    assert torch.autograd.gradcheck(lambda a, b: _opaque_matmul_in_out(a, b, "in_out"), (x, w))
    torch.library.opcheck(torch.ops.minigpt.matmul_in_out.default, (x, w, "onednn" if out_in else "in_out_split"))


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


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
def test_the_onednn_kernel_has_the_same_forward_with_and_without_a_gradient_and_exact_gradients():
    """oneDNN's linear has no autograd formula of its own: with a gradient wanted the product runs as the opaque op
    (the same oneDNN call forward, dx = dy w^T and dw = x^T dy backward). Its forward is bit-identical to the
    no-grad one (so a rollout's log-probs equal the update's), its gradients equal the plain kernel's."""
    gen = torch.Generator().manual_seed(5)
    w_plain = torch.randn(64, 96, generator=gen)  # [in, out]
    x = torch.randn(2, 7, 64, generator=gen)
    w = relayout(w_plain.clone(), "onednn").requires_grad_(True)
    with torch.no_grad():
        no_grad = matmul_in_out(x, w, "onednn")
    xg = x.clone().requires_grad_(True)
    out = matmul_in_out(xg, w, "onednn")
    assert torch.equal(out, no_grad)
    upstream = torch.randn(out.shape, generator=gen)
    out.backward(upstream)
    wp, xp = w_plain.clone().requires_grad_(True), x.clone().requires_grad_(True)
    (xp @ wp).backward(upstream)
    torch.testing.assert_close(xg.grad, xp.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(w.grad, wp.grad, rtol=0, atol=1e-5)
    assert w.grad.shape == w.shape


@torch.no_grad()
@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
def test_onednn_s_fused_bias_and_residual_give_the_separate_additions_bits():
    """Decoding fuses `+ bias` and the residual `x +` into oneDNN's product (`linear_in_out`): the same bits as
    the product followed by the additions, for the model's shapes and any number of rows."""
    from minigpt.kernels import linear_in_out

    gen = torch.Generator().manual_seed(6)
    for n_in, n_out in [(64, 192), (192, 64), (100, 257)]:
        w = relayout(torch.randn(n_in, n_out, generator=gen) * 0.1, "onednn")
        bias = torch.randn(n_out, generator=gen)
        for rows in (1, 3, 8, 167, 600):
            x = torch.randn(1, rows, n_in, generator=gen)
            residual = torch.randn(1, rows, n_out, generator=gen)
            separate = matmul_in_out(x, w, "onednn") + bias
            assert torch.equal(linear_in_out(x, w, bias, "onednn"), separate)
            assert torch.equal(linear_in_out(x, w, bias, "onednn", residual), residual + separate)


@pytest.mark.parametrize("kernel", ["out_in", "onednn"])
def test_an_out_in_layout_trains_and_saves_like_the_checkpoint(tiny_dir, tmp_path, kernel):
    from safetensors.torch import load_file

    model = GPT.from_pretrained(str(tiny_dir), layouts="as-is")
    for module in model.modules():  # force the [out, in] storage everywhere
        if isinstance(module, Conv1D):
            module.weight = torch.nn.Parameter(relayout(module.weight.data, kernel))
            module.kernel = kernel
    model.wte.weight = torch.nn.Parameter(relayout(model.wte.weight.data.t(), kernel).t())
    model.head_kernel = kernel
    model.train()
    ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(2))
    loss = model(ids[:, :-1]).flatten(0, 1).log_softmax(-1).gather(1, ids[:, 1:].reshape(-1, 1)).mean().neg()
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    model.save_pretrained(str(tmp_path / "out"))
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(saved[f"transformer.{k}"], v) for k, v in model.state_dict().items())


def fake_timer(fastest: str, calls: list):
    """A stopwatch that says `fastest` is fastest, and records every kernel it was asked to time."""
    def timer(kernel, n_in, n_out, dtype, device, give_up):
        calls.append(kernel)
        return 1.0 if kernel == fastest else 2.0
    return timer


def layouts_of(model) -> dict:
    """Whether each projection (and the LM head, wte read as [C, V]) is stored [out, in]."""
    layouts = {name: stored_out_in(m.weight) for name, m in model.named_modules() if isinstance(m, Conv1D)}
    return {**layouts, "lm_head": stored_out_in(model.wte.weight.t())}


@torch.no_grad()
def test_choices_are_measured_once_per_machine_and_reused(tiny_dir, tmp_path):
    """A second load reads the stored choice: a stopwatch that would now pick otherwise is never asked."""
    store = tmp_path / "kernels.json"
    calls = []
    first = GPT.from_pretrained(str(tiny_dir), layouts="as-is")
    choose_layouts_(first, store=ChoiceStore(store), timer=fake_timer("out_in", calls))
    assert calls and all(layouts_of(first).values())  # measured, and [out, in] won everywhere
    saved = json.loads(store.read_text())
    [(machine, choices)] = saved["machines"].items()
    assert machine == machine_id(torch.device("cpu")) and set(choices.values()) == {"out_in"}

    later_calls = []
    second = GPT.from_pretrained(str(tiny_dir), layouts="as-is")
    choose_layouts_(second, store=ChoiceStore(store), timer=fake_timer("in_out", later_calls))
    assert later_calls == [] and layouts_of(second) == layouts_of(first)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(3))
    assert torch.equal(first(ids), second(ids))

    third = GPT.from_pretrained(str(tiny_dir), layouts="as-is")  # remeasure: asks again, stores the new answer
    choose_layouts_(third, store=ChoiceStore(store), remeasure=True, timer=fake_timer("in_out", later_calls))
    assert later_calls and not any(layouts_of(third).values())
    assert set(json.loads(store.read_text())["machines"][machine].values()) == {"in_out"}


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "machines": []}', '["x"]', ""])
def test_a_damaged_choices_file_is_measured_again_and_rewritten(tiny_dir, tmp_path, content):
    store = tmp_path / "kernels.json"
    store.write_text(content)
    calls = []
    model = GPT.from_pretrained(str(tiny_dir), layouts="as-is")
    choose_layouts_(model, store=ChoiceStore(store), timer=fake_timer("out_in", calls))
    assert calls and all(layouts_of(model).values())
    assert set(json.loads(store.read_text())["machines"][machine_id(torch.device("cpu"))].values()) == {"out_in"}


def test_the_layout_policy_comes_from_the_argument_or_the_environment(tiny_dir, monkeypatch):
    monkeypatch.setenv("MINIGPT_KERNELS", "as-is")
    model = GPT.from_pretrained(str(tiny_dir))
    assert all(p.is_contiguous() for p in model.parameters())  # the checkpoint's own storage
    monkeypatch.setenv("MINIGPT_KERNELS", "fastest")
    with pytest.raises(ValueError, match="measure, remeasure, as-is"):
        GPT.from_pretrained(str(tiny_dir))


def test_the_machine_key_names_torch_the_cpu_and_its_flags(monkeypatch):
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    key = machine_id(torch.device("cpu"))
    assert torch.__version__ in key and "flags " in key
    assert key == machine_id(torch.device("cpu"))  # stable within a machine
    # An instruction-set cap makes a different machine for the kernels: its choices are measured apart.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine_id(torch.device("cpu")) == key + " | ONEDNN_MAX_CPU_ISA=AVX2"


def test_a_training_run_s_kernel_is_measured_once_per_machine_and_kept_by_its_resume(tmp_path):
    """`training_kernel` asks the stopwatch once per machine (stored); GPUs and non-fp32 weights keep the plain
    product without timing; `use_kernel_` sets every projection and the tied head."""
    from minigpt.kernels import TRAINING_KERNELS, training_kernel, use_kernel_

    store = tmp_path / "kernels.json"
    calls = []
    chosen = training_kernel(64, torch.float32, torch.device("cpu"), store=ChoiceStore(store),
                             timer=fake_timer("onednn", calls))
    assert chosen == ("onednn" if onednn_available() else "in_out_split") and set(calls) <= set(TRAINING_KERNELS)
    later = []
    assert training_kernel(64, torch.float32, torch.device("cpu"), store=ChoiceStore(store),
                           timer=fake_timer("in_out_split", later)) == chosen and later == []
    assert training_kernel(64, torch.bfloat16, torch.device("cpu"), store=ChoiceStore(store),
                           timer=fake_timer("onednn", later)) == "in_out_split" and later == []
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=8))
    use_kernel_(model, "onednn")
    assert model.head_kernel == "onednn" and all(m.kernel == "onednn" for m in model.modules() if isinstance(m, Conv1D))
    with pytest.raises(ValueError, match="unknown kernel"):
        use_kernel_(model, "fastest")


@torch.no_grad()
def test_one_row_loops_are_measured_per_machine_stored_and_reused(tiny_dir, tmp_path):
    """`choose_one_row_loops_` asks the stopwatch once per shape and kernel, stores the answer, sets the flags;
    a later model reads them back without timing; and the real timer compiles both choices and times them."""
    from minigpt.kernels import _time_one_row, choose_one_row_loops_

    store, calls = tmp_path / "kernels.json", []

    def timer(choice, n_in, n_out, kernel, give_up):  # loops win on the LM head only
        calls.append((choice, n_in, n_out, kernel))
        return 1.0 if (choice == "loops") == (n_out == 1000) else 2.0

    first = GPT.from_pretrained(str(tiny_dir))
    chosen = choose_one_row_loops_(first, store=ChoiceStore(store), timer=timer)
    shapes = {(m.weight.shape, m.kernel) for m in first.modules() if isinstance(m, Conv1D)}
    assert len(calls) == 2 * (len(shapes) + 1)  # both choices, each distinct shape and kernel once, the head
    assert first.head_one_row_loops and chosen["wte.weight"]
    assert not any(m.one_row_loops for m in first.modules() if isinstance(m, Conv1D))
    assert sum(v == "loops" for v in json.loads(store.read_text())["machines"][machine_id(torch.device("cpu"))]
               .values()) == 1

    later = []
    second = GPT.from_pretrained(str(tiny_dir))
    assert choose_one_row_loops_(second, store=ChoiceStore(store), timer=lambda *a: later.append(a) or 1.0) == chosen
    assert later == [] and second.head_one_row_loops

    for choice in ("loops", "kernel"):  # the real stopwatch: a compiled product, a positive finite time
        assert 0 < _time_one_row(choice, 64, 192, "onednn" if onednn_available() else "in_out", float("inf")) < 1
