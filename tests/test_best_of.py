"""Best-of-n (`minigpt.inference.best_of`, `minigpt-generate --best-of N --reward-model RM`) and
`RewardModel.score_texts`."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_script

from minigpt import GPT, Tokenizer
from minigpt.inference.best_of import best_of_n
from minigpt.inference.sampling import SamplingParams
from minigpt.reward_model import RewardModel
from minigpt.text import complete


@pytest.fixture(scope="module")
def reward_dir(text_model_dir, tmp_path_factory):
    directory = tmp_path_factory.mktemp("rm")
    rm = RewardModel.from_lm(GPT.from_pretrained(str(text_model_dir)), seed=4)
    rm.save_pretrained(directory, tokenizer=Tokenizer.from_pretrained(text_model_dir))
    return directory


def test_score_texts_reads_prompt_response_eos_like_training_rows(text_model_dir, reward_dir):
    rm, tok = RewardModel.from_pretrained(reward_dir), Tokenizer.from_pretrained(text_model_dir)
    prompts, responses = ["Q: one\nA:", "Q: a longer question here\nA:"], [" yes", " no, not at all"]
    got = rm.score_texts(tok, prompts, responses, batch_size=1)
    for i in range(2):
        ids = torch.tensor([tok.encode(prompts[i]) + tok.encode(responses[i]) + [tok.eos_token_id]])
        assert float(got[i]) == pytest.approx(float(rm(ids)[0].detach()), abs=1e-5)  # alone, unpadded
    assert torch.allclose(rm.score_texts(tok, prompts, responses), got, atol=1e-5)  # one padded batch


def test_best_of_n_returns_the_samples_sorted_by_reward(text_model_dir, reward_dir):
    model, tok = GPT.from_pretrained(str(text_model_dir)), Tokenizer.from_pretrained(text_model_dir)
    rm = RewardModel.from_pretrained(reward_dir)
    params = SamplingParams(do_sample=True, temperature=1.0)
    ranked = best_of_n(model, tok, rm, ["The sky is", "Once"], 5, 8, params=params, seed=3)
    plain = complete(model, tok, ["The sky is", "Once"], 8, params=params, num_return_sequences=5, seed=3)
    for p, group in enumerate(ranked):
        assert sorted(c.completion for c in group) == sorted(c.completion for c in plain[p * 5: (p + 1) * 5])
        rewards = rm.score_texts(tok, [c.prompt for c in group], [c.completion for c in group]).tolist()
        assert [c.score for c in group] == pytest.approx(rewards, abs=1e-5)
        assert rewards == sorted(rewards, reverse=True)
    assert len({c.completion for c in ranked[0]}) > 1  # really different samples to choose from


@pytest.mark.slow
def test_cli_best_of_prints_the_highest_reward_sample(text_model_dir, reward_dir):
    args = ["-m", "minigpt.cli.generate", "--model", str(text_model_dir), "--prompt", "The sky is",
            "--max-new-tokens", "6", "--seed", "2", "--best-of", "4", "--reward-model", str(reward_dir)]
    result = run_script(*args, "--json")
    assert result.returncode == 0, result.stderr
    samples = json.loads(result.stdout)["samples"]
    rewards = [s["reward"] for s in samples]
    assert len(samples) == 4 and rewards == sorted(rewards, reverse=True)
    plain = run_script(*args)
    assert plain.returncode == 0 and plain.stdout.strip() == samples[0]["text"].strip()
    bad = run_script("-m", "minigpt.cli.generate", "--model", str(text_model_dir), "--best-of", "4")
    assert bad.returncode != 0 and "--best-of N and --reward-model RM go together" in bad.stderr
    assert "Traceback" not in bad.stderr
