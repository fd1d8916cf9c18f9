"""KV-cached generation against transformers and against uncached recomputation."""

import warnings

import pytest
import torch

from helpers import make_hf_model

from minigpt import GPT, GenerationError
from minigpt.inference.decode import decode_step, prefill


def hf_greedy(hf, ids, new):
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                      do_sample=False, pad_token_id=0)
    return out


@torch.no_grad()
def uncached_greedy(model, ids, new):
    """The plain loop: re-run the whole sequence every step and take the argmax."""
    for _ in range(new):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@torch.no_grad()
def test_greedy_equals_transformers_gpt2_shape(gpt2_shape, gpt2_shape_hf, device):
    ids = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(0)).to(device)
    ours = gpt2_shape.to(device).generate(ids, 40)
    assert torch.equal(ours, hf_greedy(gpt2_shape_hf.to(device), ids, 40))


@torch.no_grad()
def test_greedy_equals_transformers_other_heads(tmp_path, device):
    hf = make_hf_model(seed=11, n_layer=3, n_head=8, n_embd=128, vocab_size=3000, n_positions=256).to(device)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), device=device)
    ids = torch.randint(0, 3000, (2, 9), generator=torch.Generator().manual_seed(1)).to(device)
    assert torch.equal(model.generate(ids, 48), hf_greedy(hf, ids, 48))


@torch.no_grad()
def test_cached_equals_uncached_exactly(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model.generate(ids, 60), uncached_greedy(model, ids, 60))


@torch.no_grad()
def test_cached_logits_equal_full_forward(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.randint(0, 1000, (2, 30), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    logits, state = prefill(model, ids[:, :10], torch.ones(2, 10, dtype=torch.long), max_len=30)
    torch.testing.assert_close(logits, full[:, 9], rtol=0, atol=1e-5)
    for t in range(10, 30):
        logits = decode_step(model, ids[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)


@torch.no_grad()
def test_left_padded_batch_equals_each_prompt_alone(gpt2_shape, device):
    model = gpt2_shape.to(device)
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 50257, (n,), generator=gen) for n in (3, 11, 7)]
    width = max(len(p) for p in prompts)
    ids = torch.full((3, width), 50256, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    batch = model.generate(ids.to(device), 40, attention_mask=mask.to(device))
    for i, p in enumerate(prompts):
        alone = model.generate(p[None].to(device), 40)
        assert torch.equal(batch[i, width:], alone[0, len(p):]), f"row {i} differs from its solo run"


@torch.no_grad()
def test_sampling_seeds_and_num_return_sequences(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    a = model.generate(ids, 20, do_sample=True, seed=42, num_return_sequences=5)
    b = model.generate(ids, 20, do_sample=True, seed=42, num_return_sequences=5)
    c = model.generate(ids, 20, do_sample=True, seed=43, num_return_sequences=5)
    assert a.shape == (10, 23)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:5, :3], ids[:1].expand(5, 3)) and torch.equal(a[5:, :3], ids[1:].expand(5, 3))
    assert len({tuple(r) for r in a[:5, 3:].tolist()}) > 1, "five samples of one prompt should differ"
    k1 = model.generate(ids, 20, do_sample=True, top_k=1, seed=1)
    assert torch.equal(k1, model.generate(ids, 20))


@torch.no_grad()
def test_eos_stops_and_pads_a_row(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = model.generate(ids, 30)
    eos = free[0, 3 + 4].item()  # row 0's 5th new token becomes "EOS"
    stopped = model.generate(ids, 30, eos_token_id=eos)
    row0 = stopped[0, 3:].tolist()
    first = row0.index(eos)
    assert first <= 4 and all(t == eos for t in row0[first:]), "after EOS a row is padded"
    if eos not in free[1, 3:].tolist():
        assert torch.equal(stopped[1], free[1]), "the other row goes on"
    # when every row is done the loop ends early
    short = model.generate(ids[:1], 30, eos_token_id=eos)
    assert short.shape[1] == 3 + first + 1


@torch.no_grad()
def test_stop_sequences(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.tensor([[1, 2, 3]])
    free = model.generate(ids, 30)[0, 3:].tolist()
    stop = free[5:7]
    out = model.generate(ids, 30, stop=[stop])[0, 3:].tolist()
    end = next(i for i in range(2, 31) if free[i - 2:i] == stop)
    assert out == free[:end]


@torch.no_grad()
def test_context_policy_at_the_boundary(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))  # 128 positions
    fits = torch.randint(0, 1000, (1, 100), generator=torch.Generator().manual_seed(5))
    # the last new token is never fed back: 100 + 29 - 1 = 128 positions are used, exactly the context
    out = model.generate(fits, 29)
    assert out.shape == (1, 129) and torch.equal(out, uncached_greedy(model, fits, 29))
    with pytest.raises(GenerationError, match="exceeds the 128-token context"):
        model.generate(fits, 30)
    with pytest.warns(UserWarning, match="prompt truncated to its last 99 of 100 tokens"):
        out = model.generate(fits, 30, context="truncate")
    assert out.shape == (1, 129) and torch.equal(out[:, :99], fits[:, 1:])
    assert torch.equal(out, uncached_greedy(model, fits[:, 1:], 30))
    full = torch.randint(0, 1000, (1, 128), generator=torch.Generator().manual_seed(6))
    assert model.generate(full, 1).shape == (1, 129)  # a full-context prompt still gets its one token
    with pytest.raises(GenerationError, match="leaves no room"):
        model.generate(fits[:, :1], 129, context="truncate")


def test_bad_generation_arguments(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.tensor([[1, 2]])
    for kwargs, message in [(dict(max_new_tokens=-1), "max_new_tokens"),
                            (dict(max_new_tokens=3, num_return_sequences=0), "num_return_sequences"),
                            (dict(max_new_tokens=3, do_sample=True, top_p=0.0), "top_p"),
                            (dict(max_new_tokens=3, do_sample=True, temperature=-1.0), "temperature")]:
        with pytest.raises(GenerationError, match=message):
            model.generate(ids, **kwargs)
    with pytest.raises(GenerationError, match="token ids must be in"):
        model.generate(torch.tensor([[1, 5000]]), 3)
    with pytest.raises(GenerationError, match="all zeros"):
        model.generate(ids, 3, attention_mask=torch.tensor([[0, 0]]))
    assert torch.equal(model.generate(ids, 0), ids)


def test_cache_is_not_in_state_dict(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    before = set(model.state_dict())
    model.generate(torch.tensor([[1, 2]]), 5)
    assert set(model.state_dict()) == before


@torch.no_grad()
def test_repetition_penalty_matches_transformers(tiny_hf, tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.tensor([[3, 4, 5, 6]])
    ours = model.generate(ids, 25, repetition_penalty=1.5)
    ref = tiny_hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=25, min_new_tokens=25,
                           do_sample=False, repetition_penalty=1.5, pad_token_id=0)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, model.generate(ids, 25))


@torch.no_grad()
def test_over_padded_batches_keep_every_column(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.tensor([[0, 0, 0, 5, 6, 7], [0, 0, 0, 0, 8, 9]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]])  # three columns of padding in every row
    out = model.generate(ids, 5, attention_mask=mask)
    assert out.shape == (2, 6 + 5) and torch.equal(out[:, :6], ids)  # out[:, T:] is exactly the new tokens
    assert torch.equal(out[0, 3:], model.generate(ids[:1, 3:], 5)[0])
    assert torch.equal(out[1, 4:], model.generate(ids[1:, 4:], 5)[0])


@torch.no_grad()
def test_stop_without_eos_pads_with_the_config_eos(text_model_dir):
    model = GPT.from_pretrained(str(text_model_dir))  # EOS 50256
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = model.generate(ids, 10)
    new = free[0, 3:].tolist()
    stop = new[1:3]
    end = 3 + next(i for i in range(2, 11) if new[i - 2:i] == stop)  # where row 0 first ends with `stop`
    out = model.generate(ids, 10, stop=[stop])
    assert out[0, end:].tolist() == [50256] * (13 - end)  # padded with EOS, not token 0
    assert torch.equal(out[0, :end], free[0, :end])


def test_right_padded_masks_are_refused(tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    with pytest.raises(GenerationError, match="left-padded"):
        model.generate(torch.tensor([[5, 6, 0]]), 3, attention_mask=torch.tensor([[1, 1, 0]]))


@torch.no_grad()
def test_no_repeat_ngram_min_new_tokens_and_bad_words_in_generation_equal_transformers(tiny_hf, tiny_dir):
    model = GPT.from_pretrained(str(tiny_dir))
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(3))
    free = model.generate(ids, 12)
    eos = int(free[0, 10])  # a token greedy decoding emits: as EOS it would end the row early
    settings = [dict(no_repeat_ngram_size=2), dict(min_new_tokens=5), dict(bad_words_ids=[[int(free[0, 9])]])]
    for kwargs in settings:
        theirs = tiny_hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos, **kwargs)
        words = kwargs.pop("bad_words_ids", None)
        from minigpt.inference.generation import generate
        from minigpt.sampling import SamplingParams

        params = SamplingParams(**kwargs, bad_words_ids=tuple(map(tuple, words)) if words else ())
        ours = generate(model, ids, 12, params=params, eos_token_id=eos)
        n = theirs.shape[1]
        assert torch.equal(ours[:, :n], theirs), kwargs


@torch.no_grad()
@pytest.mark.parametrize("num_beams", [1, 3])
def test_default_eos_is_the_models_for_greedy_and_beams_as_in_transformers(tmp_path, num_beams):
    """eos_token_id=None means the model's EOS, in every mode (transformers: generation_config.eos_token_id)."""
    hf = make_hf_model(seed=22, vocab_size=300)
    ids = torch.randint(0, 300, (1, 5), generator=torch.Generator().manual_seed(4))
    free = GPT.from_pretrained(_saved(hf, tmp_path / "free")).generate(ids, 12, eos_token_id=-1, num_beams=num_beams)
    stop = int(free[0, 5])  # the first new token, which the free run follows with other tokens
    assert (free[0, 5:] != stop).any()
    hf.config.eos_token_id = hf.generation_config.eos_token_id = stop
    model = GPT.from_pretrained(_saved(hf, tmp_path / "eos"))
    ours = model.generate(ids, 12, num_beams=num_beams)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         num_beams=num_beams, pad_token_id=stop)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, free)  # it stopped at the model's EOS


def _saved(hf, directory):
    hf.save_pretrained(directory)
    return str(directory)
