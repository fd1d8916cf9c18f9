"""Beam search and generation's scores against transformers' generate, token for token."""

import itertools

import pytest
import torch

from minigpt import GPT, GenerationError


@pytest.fixture(scope="module")
def model(tiny_dir):
    return GPT.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(3))


def eos_of(model, prompt):
    """A token the model emits early in greedy decoding: as EOS, beams finish at different lengths."""
    return int(model.generate(prompt, 4)[0, -1])


GRID = list(itertools.product([2, 4, 5], [True, False, "never"], [-1.0, 0.0, 1.0, 2.0]))


@torch.no_grad()
@pytest.mark.parametrize("num_beams,early_stopping,length_penalty", GRID)
def test_beam_search_equals_transformers(model, tiny_hf, prompt, num_beams, early_stopping, length_penalty):
    eos = eos_of(model, prompt)
    index = GRID.index((num_beams, early_stopping, length_penalty))
    settings = dict(num_beams=num_beams, early_stopping=early_stopping, length_penalty=length_penalty,
                    no_repeat_ngram_size=2 * (index % 2), num_return_sequences=num_beams if index % 3 else 1)
    theirs = tiny_hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos, output_scores=True, return_dict_in_generate=True,
                              **settings)
    ours = model.generate(prompt, 10, eos_token_id=eos, return_dict=True, **settings)
    assert ours.sequences.shape == theirs.sequences.shape and torch.equal(ours.sequences, theirs.sequences)
    assert torch.allclose(ours.sequences_scores, theirs.sequences_scores, atol=1e-4)


@torch.no_grad()
def test_some_hypotheses_finish_early(model, prompt):
    eos = eos_of(model, prompt)
    out = model.generate(prompt, 10, eos_token_id=eos, num_beams=5, num_return_sequences=5, length_penalty=0.0)
    lengths = {row.index(eos) + 1 if eos in row else len(row) for row in out[:, 6:].tolist()}
    assert len(lengths) > 1 and min(lengths) < 10  # the grid above covers EOS-finished hypotheses


@torch.no_grad()
def test_ragged_batch_equals_transformers_and_each_prompt_alone(model, tiny_hf):
    a = torch.randint(0, 1000, (1, 4), generator=torch.Generator().manual_seed(7))
    b = torch.randint(0, 1000, (1, 7), generator=torch.Generator().manual_seed(8))
    eos = eos_of(model, b)
    batch = torch.full((2, 7), eos)
    batch[0, 3:], batch[1] = a[0], b[0]
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    settings = dict(num_beams=3, num_return_sequences=2, length_penalty=0.0)
    theirs = tiny_hf.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                              pad_token_id=eos, **settings)
    ours = model.generate(batch, 10, attention_mask=mask, eos_token_id=eos, **settings)
    assert torch.equal(ours, theirs)
    alone_a, alone_b = (model.generate(x, 10, eos_token_id=eos, **settings) for x in (a, b))
    assert torch.equal(ours[:2, 3: 3 + alone_a.shape[1]], alone_a)
    assert torch.equal(ours[2:, : alone_b.shape[1]], alone_b)
    assert torch.all(ours[:2, alone_a.shape[1] + 3:] == eos)  # the rest of the row is padding


@torch.no_grad()
def test_token_logprobs_equal_transformers_transition_scores(model, tiny_hf, prompt):
    out = model.generate(prompt, 8, return_dict=True)
    theirs = tiny_hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                              output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    expected = tiny_hf.compute_transition_scores(theirs.sequences, theirs.scores, normalize_logits=True)
    assert torch.equal(out.sequences, theirs.sequences) and out.sequences_scores is None
    assert torch.allclose(out.token_logprobs, expected, atol=1e-4)
    # a row that stopped early: NaN after its end, while the other row goes on
    eos = eos_of(model, prompt)
    other = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(11))
    two = model.generate(torch.cat([prompt, other]), 8, eos_token_id=eos, return_dict=True)
    end = two.sequences[0, 6:].tolist().index(eos) + 1  # row 0's tokens up to its EOS
    assert end < 8 and eos not in two.sequences[1, 6:].tolist()
    assert torch.isfinite(two.token_logprobs[0, :end]).all() and torch.isnan(two.token_logprobs[0, end:]).all()
    assert torch.isfinite(two.token_logprobs[1]).all()


def test_bad_beam_arguments(model, prompt):
    for kwargs, message in [(dict(num_beams=0), "num_beams must be a positive integer"),
                            (dict(num_beams=2, num_return_sequences=3), "must be <= num_beams"),
                            (dict(num_beams=2, do_sample=True), "beam sampling"),
                            (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
                            (dict(num_beams=2, stop=[[5]]), "do not apply to beam search")]:
        with pytest.raises(GenerationError, match=message):
            model.generate(prompt, 4, **kwargs)
