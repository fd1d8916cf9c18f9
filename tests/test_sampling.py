"""The sampling processors on hand-made logits."""

import pytest
import torch

from minigpt import GenerationError
from minigpt.sampling import (SamplingParams, apply_repetition_penalty, apply_temperature, ban_bad_words,
                              ban_repeated_ngrams, min_p_filter, process_logits, select_next, top_k_filter,
                              top_p_filter, typical_filter)

NEG = float("-inf")


def test_top_k_keeps_ties_with_the_kth_value_as_transformers_does():
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.5, 3.0]])
    out = top_k_filter(logits, 2)
    assert out.tolist() == [[NEG, 3.0, 3.0, 3.0, NEG, 3.0]]  # four tokens tie at the 2nd value: all stay
    out = top_k_filter(torch.tensor([[5.0, 1.0, 4.0, 2.0]]), 2)
    assert out.tolist() == [[5.0, NEG, 4.0, NEG]]
    assert torch.equal(top_k_filter(logits, 100), logits), "k above the vocab keeps everything"


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_top_p_always_keeps_one_token():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    out = top_p_filter(logits, 1e-9)
    assert torch.isfinite(out).tolist() == [[True, False, False], [False, False, True]]


def test_top_p_order_is_per_row():
    logits = torch.tensor([[0.0, 2.0, 1.0], [2.0, 1.0, 0.0]])
    keep = torch.isfinite(top_p_filter(logits, 0.5))
    assert keep.tolist() == [[False, True, False], [True, False, False]]


def test_temperature():
    logits = torch.tensor([[2.0, -4.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[4.0, -8.0]]
    assert apply_temperature(logits, 1.0) is logits


def test_repetition_penalty_is_ctrl_as_in_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    seen_ids = torch.tensor([[0, 1, 4]])
    seen = torch.zeros(1, 5, dtype=torch.bool)
    seen[0, seen_ids[0]] = True
    ours = apply_repetition_penalty(logits, seen, 2.0)
    assert ours.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.25]]
    ref = RepetitionPenaltyLogitsProcessor(2.0)(seen_ids, logits.clone())
    assert torch.equal(ours, ref)


def test_processor_order_matches_transformers():
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 200, generator=gen) * 3
    prev = torch.randint(0, 200, (4, 30), generator=gen)
    seen = torch.zeros(4, 200, dtype=torch.bool).scatter_(1, prev, True)
    params = SamplingParams(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3)
    ours = process_logits(logits.clone(), params, seen)
    ref = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7),
                               TopKLogitsWarper(20), TopPLogitsWarper(0.8)])(prev, logits.clone())
    assert torch.equal(torch.isfinite(ours), torch.isfinite(ref))
    finite = torch.isfinite(ref)
    assert torch.allclose(ours[finite], ref[finite])


def test_greedy_and_temperature_zero():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert select_next(logits, SamplingParams(), None, None).tolist() == [1, 0]
    zero = SamplingParams(do_sample=True, temperature=0.0)
    assert select_next(logits, zero, None, torch.Generator().manual_seed(0)).tolist() == [1, 0]


def test_seeded_draws_reproduce():
    logits = torch.zeros(3, 1000)
    params = SamplingParams(do_sample=True)
    a = select_next(logits, params, None, torch.Generator().manual_seed(7))
    b = select_next(logits, params, None, torch.Generator().manual_seed(7))
    c = select_next(logits, params, None, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_one_is_greedy():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(3))
    sampled = select_next(logits, SamplingParams(do_sample=True, top_k=1), None, torch.Generator().manual_seed(1))
    assert torch.equal(sampled, logits.argmax(-1))


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(repetition_penalty=0.0), dict(top_k=2.5)])
def test_invalid_params(kwargs):
    with pytest.raises(GenerationError):
        SamplingParams(do_sample=True, **kwargs)


# --------------------------------------------------------------------------- the processors vs transformers'


def hf_processed(processor, logits, ids=None):
    ids = ids if ids is not None else torch.zeros(logits.shape[0], 1, dtype=torch.long)
    return processor(ids, logits.clone())


def same_scores(ours, theirs):
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])


@pytest.mark.parametrize("value", [0.05, 0.2, 0.9])
def test_min_p_and_typical_p_equal_transformers(value):
    from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TypicalLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 3
    logits[0, :10] = 5.0  # ties
    same_scores(min_p_filter(logits.clone(), value), hf_processed(MinPLogitsWarper(value), logits))
    same_scores(typical_filter(logits.clone(), value), hf_processed(TypicalLogitsWarper(value), logits))
    bf16 = logits.bfloat16().float()  # bf16 logits tie often: top-k keeps every tie, as transformers does
    same_scores(top_k_filter(bf16.clone(), 50), hf_processed(TopKLogitsWarper(50), bf16))


def test_no_repeat_ngrams_and_bad_words_equal_transformers():
    from transformers.generation.logits_process import NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (5, 30), generator=gen)  # a small vocabulary repeats n-grams often
    logits = torch.randn(5, 8, generator=gen)
    valid = torch.ones_like(ids, dtype=torch.bool)
    for n in (1, 2, 3, 4):
        same_scores(ban_repeated_ngrams(logits.clone(), ids, valid, n),
                    hf_processed(NoRepeatNGramLogitsProcessor(n), logits, ids))
    words = ((3,), (1, 2), (4, 4, 5), (7,))
    same_scores(ban_bad_words(logits.clone(), words, ids, 7),
                hf_processed(NoBadWordsLogitsProcessor([list(w) for w in words], eos_token_id=7), logits, ids))


def test_no_repeat_ngrams_ignore_padding():
    logits = torch.zeros(1, 6)
    ids = torch.tensor([[5, 5, 1, 5]])  # left padding 5, 5 (mask 0), then the row: 1, 5
    out = ban_repeated_ngrams(logits, ids, torch.tensor([[0, 0, 1, 1]]), 2)
    assert torch.isfinite(out).all()  # (5, 5) is padding: after 5 nothing is banned
    out = ban_repeated_ngrams(logits, ids, torch.ones(1, 4), 2)
    assert torch.isinf(out[0, 5]) and torch.isinf(out[0, 1])


def test_min_new_tokens_bans_eos_until_reached():
    logits = torch.zeros(2, 5)
    params = SamplingParams(min_new_tokens=3)
    assert torch.isinf(process_logits(logits, params, None, new_tokens=2, eos_token_id=4)[:, 4]).all()
    assert torch.isfinite(process_logits(logits, params, None, new_tokens=3, eos_token_id=4)).all()


def test_draw_among_the_kept_tokens_has_multinomials_distribution():
    """After filtering, `draw` samples among each row's kept tokens only: the empirical frequencies of 40,000
    draws per row match the probabilities (6 standard errors), and a zero-probability token is never drawn."""
    from minigpt.inference.sampling import draw

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1000, generator=gen) * 2
    logits = top_k_filter(logits, 40)  # rows keep 40 tokens: the narrow path
    probs = torch.softmax(logits, -1)
    n = 40_000
    tokens = draw(probs.repeat_interleave(n, 0), gen).view(3, n)  # [3, n]
    counts = torch.zeros(3, 1000).scatter_add_(1, tokens, torch.ones(3, n))
    assert bool((counts[probs == 0] == 0).all()), "a filtered-out token was drawn"
    stderr = (probs * (1 - probs) / n).sqrt()
    assert bool(((counts / n - probs).abs() <= 6 * stderr + 1e-9).all())


def test_draw_over_a_wide_distribution_is_torch_multinomial():
    """Unfiltered (a row keeps more than 1/16 of the vocabulary): exactly `torch.multinomial`'s draw."""
    from minigpt.inference.sampling import draw

    probs = torch.softmax(torch.randn(4, 1000, generator=torch.Generator().manual_seed(1)), -1)
    got = draw(probs, torch.Generator().manual_seed(5))
    want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5))[:, 0]
    assert torch.equal(got, want)
