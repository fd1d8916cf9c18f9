"""The compiled static-cache decode path gives the eager path's tokens (on CPU: inductor without CUDA graphs)."""

import pytest
import torch

from minigpt import GPT
from minigpt.inference.fast import bucketed_length, compile_decode


def test_bucketed_length():
    assert bucketed_length(1, 1024) == 256 and bucketed_length(257, 1024) == 512
    assert bucketed_length(1000, 1024) == 1024 and bucketed_length(100, 128) == 128


def eager_and_compiled(tiny_dir, device) -> tuple[GPT, GPT]:
    """The tiny model twice: eager, and with the compiled decode step (CUDA graphs on a GPU)."""
    eager = GPT.from_pretrained(str(tiny_dir), device=device)
    mode = "reduce-overhead" if device.type == "cuda" else None
    return eager, compile_decode(GPT.from_pretrained(str(tiny_dir), device=device), mode=mode)


@torch.no_grad()
def test_compiled_decode_equals_eager(tiny_dir, device):
    eager, compiled = eager_and_compiled(tiny_dir, device)
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0)).to(device)
    assert torch.equal(compiled.generate(ids, 30), eager.generate(ids, 30))
    assert torch.equal(compiled.generate(ids[:, 3:], 25), eager.generate(ids[:, 3:], 25)), "new prompt length"
    sampled = dict(do_sample=True, top_k=20, seed=3, num_return_sequences=3)
    assert torch.equal(compiled.generate(ids, 20, **sampled), eager.generate(ids, 20, **sampled))
    assert set(compiled.state_dict()) == set(eager.state_dict()), "the static cache is not in the state dict"


@torch.no_grad()
def test_two_streams_at_once_do_not_share_the_static_cache(tiny_dir, device):
    """A second generation started while the first stream is still open gets a cache of its own."""
    eager, compiled = eager_and_compiled(tiny_dir, device)
    a = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(0)).to(device)
    b = torch.randint(0, 1000, (1, 7), generator=torch.Generator().manual_seed(1)).to(device)
    first = compiled.generate_stream(a, 12)
    tokens = [next(first)[0]]
    inner = compiled.generate(b, 12)  # runs to the end while `first` is half way
    tokens += [step[0] for step in first]
    assert torch.equal(torch.cat([a, torch.stack(tokens, 1)], 1), eager.generate(a, 12))
    assert torch.equal(inner, eager.generate(b, 12))
    assert not compiled._static_decoder.busy  # both finished: the static cache is free again


def test_threads_claim_the_static_cache_one_at_a_time(tiny_dir):
    """Claiming the static cache is atomic: of many threads released at once exactly one gets it."""
    import threading

    decoder = compile_decode(GPT.from_pretrained(str(tiny_dir)))._static_decoder
    start, got = threading.Barrier(8), []

    def claim():
        start.wait()
        got.append(decoder.claim())

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == [False] * 7 + [True] and decoder.busy
    decoder.give_back()
    assert not decoder.busy and decoder.claim()



@pytest.mark.parametrize("loops", [True, False])
@torch.no_grad()
def test_compiled_cpu_step_with_onednn_and_one_row_loops_equals_eager(tiny_dir, loops):
    """On a CPU the compiled step is `Transformer.decode` for one row: inductor's own loops for its products
    (`kernels.rowdot_in_out`) where chosen, else oneDNN's with the bias and residual fused, and its attention
    written out (`model.one_query_attention`). Its logits are within fp32 rounding of the eager step's, step
    after step, and greedy decoding gives the same tokens. Several rows (a left-padded two-row batch) decode
    eagerly: the eager step's numbers exactly."""
    from minigpt.inference.decode import decode_step, prefill, release
    from torch.profiler import profile

    from minigpt.kernels import onednn_available, use_kernel_

    if not onednn_available():
        pytest.skip("this torch has no oneDNN")
    eager, compiled = GPT.from_pretrained(str(tiny_dir)), compile_decode(GPT.from_pretrained(str(tiny_dir)))
    for model in (eager, compiled):
        use_kernel_(model, "onednn")
    for module in compiled.modules():  # (compile_decode measured these; set here, so the test is the same anywhere)
        module.one_row_loops = loops
    compiled.head_one_row_loops = loops
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 left-padded
    for rows in (1, 2):
        states = [prefill(model, ids[:rows], mask[:rows], 9 + 12) for model in (eager, compiled)]
        assert states[0][1].decoder is None
        assert (states[1][1].decoder is not None) == (rows == 1)  # the compiled step runs for one row only
        tokens = states[0][0].argmax(-1)
        for _ in range(12):
            want = decode_step(eager, tokens, states[0][1])
            with profile() as run:
                got = decode_step(compiled, tokens, states[1][1])
            ops = {event.name for event in run.events()}
            products = {"minigpt::fused_onednn_linear", "minigpt::product"}
            if rows == 1:  # inductor's loops: no product op; oneDNN's: the bias and residual fused, the head a product
                assert products & ops == (set() if loops else products)
                assert not any("scaled_dot_product" in op for op in ops)  # the attention is inductor's loops too
                torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
            else:
                assert not products & ops and torch.equal(got, want)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            tokens = want.argmax(-1)
        release(states[1][1])
    assert torch.equal(compiled.generate(ids[:1], 20), eager.generate(ids[:1], 20))


@torch.no_grad()
def test_recompile_limit_falls_back_to_eager_and_is_counted_per_model(tmp_path):
    """Past dynamo's recompile limit a new shape decodes eagerly (one warning, the same tokens); another model's
    decoder has its own count (each compiles its own code object). Shapes here are cache buckets of one row
    (256, 512, 600 slots of a 600-position model): on a CPU only one row decodes compiled. (CUDA graphs capture
    each shape once, no fallback: not tested here.)"""
    import warnings

    from helpers import make_hf_model

    make_hf_model(seed=4, n_positions=600).save_pretrained(tmp_path)
    eager = GPT.from_pretrained(str(tmp_path))
    first, second = (compile_decode(GPT.from_pretrained(str(tmp_path))) for _ in range(2))
    ids = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch._dynamo.config.patch(recompile_limit=2):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback for the first two shapes, nor for the second model
            for new in (4, 300):  # cache buckets of 256 and 512 slots
                assert torch.equal(first.generate(ids, new), eager.generate(ids, new))
            assert torch.equal(second.generate(ids, 4), eager.generate(ids, 4))
        with pytest.warns(RuntimeWarning, match="recompile limit"):
            assert torch.equal(first.generate(ids, 560), eager.generate(ids, 560))  # a third shape: eager


@torch.no_grad()
def test_compiled_cpu_step_in_bfloat16_follows_eager(tiny_dir):
    """A bf16 model's compiled one-row step (its attention written out, accumulated in fp32 as SDPA's kernel
    does): logits within a few bf16 steps of eager's, step after step, and the same greedy tokens."""
    from minigpt.inference.decode import decode_step, prefill, release

    eager, compiled = (GPT.from_pretrained(str(tiny_dir), dtype=torch.bfloat16) for _ in range(2))
    compile_decode(compiled)
    ids = torch.randint(0, 1000, (1, 9), generator=torch.Generator().manual_seed(5))
    states = [prefill(model, ids, torch.ones_like(ids), 9 + 16) for model in (eager, compiled)]
    assert states[1][1].decoder is not None
    tokens = states[0][0].argmax(-1)
    for _ in range(16):
        want, got = (decode_step(model, tokens, state) for model, (_, state) in zip((eager, compiled), states))
        torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0.1)  # bf16's step at |logit| ~4: 1/64
        tokens = want.argmax(-1)
    release(states[1][1])
    assert torch.equal(compiled.generate(ids, 16), eager.generate(ids, 16))
