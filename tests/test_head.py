"""The chunked LM-head losses (`minigpt.head`) equal the plain [N, V]-logits path, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minigpt.head import chunk_rows, summed_nll, token_logprobs
from minigpt.kernels import onednn_available

V = 50257  # GPT-2's vocabulary: several chunks for a few hundred rows


def inputs(n: int, c: int = 48, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=gen).requires_grad_()
    weight = (torch.randn(V, c, generator=gen) * 0.2).requires_grad_()
    targets = torch.randint(0, V, (n,), generator=gen)
    return hidden, weight, targets


def grads(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


KERNELS = ["in_out", "onednn"]  # the head's products: ATen's, or oneDNN's (a training run's measured choice)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_equal_the_plain_path_with_gradients(temperature, kernel):
    n = 2 * chunk_rows(V) + 37  # three chunks, the last one ragged
    hidden, weight, targets = inputs(n)
    upstream = torch.randn(n)  # per-token weights, as PPO's and DPO's losses give
    logps, entropy = token_logprobs(hidden, weight, targets, temperature=temperature, entropy=True, kernel=kernel)
    plain = (hidden @ weight.t() / temperature).log_softmax(-1)  # [N, V]
    plain_logps = plain.gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(logps, plain_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, -(plain.exp() * plain).sum(-1), atol=1e-4, rtol=1e-5)
    assert not entropy.requires_grad  # a statistic
    got = grads((logps * upstream).sum(), hidden, weight)
    want = grads((plain_logps * upstream).sum(), hidden, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_summed_nll_equals_cross_entropy_with_gradients_scaled_by_the_upstream_gradient(kernel):
    n = chunk_rows(V) + 5
    hidden, weight, targets = inputs(n, seed=1)
    loss = summed_nll(hidden, weight, targets, kernel=kernel)
    plain = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    assert float(loss.detach()) == pytest.approx(float(plain.detach()), rel=1e-6)
    got = grads(loss * 0.37, hidden, weight)  # the gradient formed in forward is scaled in backward
    want = grads(plain * 0.37, hidden, weight)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        assert float(summed_nll(hidden, weight, targets, kernel=kernel)) == pytest.approx(float(plain), rel=1e-6)


def test_no_rows_give_a_zero_weight_gradient():
    hidden, weight, targets = inputs(0)
    for loss in (summed_nll(hidden, weight, targets), token_logprobs(hidden, weight, targets)[0].sum()):
        grad_hidden, grad_weight = grads(loss, hidden, weight)
        assert grad_hidden.shape == (0, 48) and grad_weight.shape == weight.shape and not grad_weight.any()


def test_bf16_autocast_computes_the_logits_in_bf16_like_the_plain_path():
    hidden, weight, targets = inputs(64, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = token_logprobs(hidden, weight, targets)
        plain = (hidden @ weight.t()).float().log_softmax(-1).gather(1, targets[:, None])[:, 0]
        loss = summed_nll(hidden, weight, targets)
    torch.testing.assert_close(logps, plain, atol=1e-5, rtol=1e-5)  # the same bf16 logits, then fp32
    assert float(loss) == pytest.approx(-float(plain.sum()), rel=1e-5)
    exact = (hidden @ weight.t()).log_softmax(-1).gather(1, targets[:, None])[:, 0]
    assert 0 < float((logps - exact).abs().max()) < 0.1  # bf16 rounding, within its tolerance


def test_a_row_does_not_depend_on_the_rows_around_it():
    hidden, weight, targets = inputs(3 * chunk_rows(V), seed=3)
    logps, _ = token_logprobs(hidden, weight, targets)
    for row in (0, chunk_rows(V) + 1, len(targets) - 1):
        alone, _ = token_logprobs(hidden[row: row + 1], weight, targets[row: row + 1])
        assert torch.equal(alone, logps[row: row + 1])


def test_model_summed_nll_equals_the_cross_entropy_of_its_logits():
    from minigpt.config import GPTConfig
    from minigpt.model import Transformer

    torch.manual_seed(0)
    model = Transformer(GPTConfig(n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=V))
    ids = torch.randint(0, V, (3, 9))
    hidden = model.features(ids[:, :-1]).reshape(-1, 32)
    plain = F.cross_entropy(model(ids[:, :-1]).reshape(-1, V), ids[:, 1:].reshape(-1), reduction="sum")
    assert float(model.summed_nll(hidden, ids[:, 1:].reshape(-1))) == pytest.approx(float(plain), rel=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir):
    """Recomputing each block's activations in backward changes memory, not numbers."""
    from minigpt import GPT

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row: the attention mask goes through the checkpoint too
    grads = []
    for recompute in (False, True):
        model = GPT.from_pretrained(str(tiny_dir)).train()
        model.gradient_checkpointing = recompute
        calls = []
        model.h[0].register_forward_pre_hook(lambda *_: calls.append(1))
        logits = model(ids, mask)
        logits.float().square().mean().backward()
        assert len(calls) == (2 if recompute else 1)  # checkpointing runs the block again in backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-7, rtol=1e-5), name


def test_gradient_checkpointing_trains_to_the_same_weights(sft_data, text_model_dir, tmp_path):
    import json

    from minigpt.train import TrainConfig, train

    logs = []
    for recompute in (False, True):
        out = tmp_path / f"run{int(recompute)}"
        train(TrainConfig(data=str(sft_data), out=str(out), model=str(text_model_dir), eval_fraction=0, batch_size=4,
                          max_steps=3, lr=2e-3, warmup_steps=0, seed=3, gradient_checkpointing=recompute),
              progress=False)
        logs.append([json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()])
    assert logs[0] == pytest.approx(logs[1], rel=1e-5, abs=1e-6)


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")
def test_the_onednn_head_compiles_with_exact_gradients():
    """Under torch.compile the oneDNN products go through the opaque op (inductor lowers oneDNN's linear only for
    frozen weights and failed on a parameter): a compiled loss equals the eager one, gradients included."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(40, 16, generator=gen).requires_grad_()
    weight = (torch.randn(1000, 16, generator=gen) * 0.2).requires_grad_()
    targets = torch.randint(0, 1000, (40,), generator=gen)

    def loss_fn(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        nll = summed_nll(h, w, targets, kernel="onednn")
        logps, _ = token_logprobs(h, w, targets, kernel="onednn")
        return nll + 0.5 * logps.sum()

    eager = loss_fn(hidden, weight)
    compiled = torch.compile(loss_fn)(hidden, weight)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-6)
    for g, w in zip(grads(compiled, hidden, weight), grads(eager, hidden, weight)):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
