"""Judging models on held-out prompts: sample, let the clean labeler score, compare with SFT, measure the KL.

Everything goes through minigpt's public API: `GPT.from_pretrained`, `minigpt.text.complete` for sampling,
`RewardModel.score_texts` for the reward model, `minigpt.inference.best_of.best_of_n` for the best-of-n baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import minigpt
from minigpt.inference.best_of import best_of_n
from minigpt.inference.sampling import SamplingParams
from minigpt.reward_model import RewardModel
from minigpt.template import PromptTemplate
from minigpt.text import complete
from minigpt.tokenizer import Tokenizer

from .world import Task, World


@dataclass
class Samples:
    """One sampled response per held-out task, with the clean labeler's score for each."""

    responses: list[str]
    scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)


def load(directory: str):
    model = minigpt.GPT.from_pretrained(directory).eval()
    return model, Tokenizer.for_model(directory), PromptTemplate.for_model(directory)


def rendered(template: PromptTemplate, tasks: list[Task]) -> list[str]:
    return [template.render(task.prompt) for task in tasks]


@torch.no_grad()
def sample(directory: str, tasks: list[Task], world: World, *, temperature: float, max_new_tokens: int,
           seed: int, batch: int = 64) -> Samples:
    """One response per task, sampled at `temperature` (no top-k), in batches, seeded."""
    model, tokenizer, template = load(directory)
    params = SamplingParams(do_sample=True, temperature=temperature)
    prompts = rendered(template, tasks)
    responses = []
    for i in range(0, len(prompts), batch):
        done = complete(model, tokenizer, prompts[i: i + batch], max_new_tokens, params=params, seed=seed + i)
        responses += [c.completion for c in done]
    return Samples(responses, [world.score(t, r) for t, r in zip(tasks, responses)])


@torch.no_grad()
def sample_k(directory: str, tasks: list[Task], k: int, *, temperature: float, max_new_tokens: int,
             seed: int, batch: int = 32) -> list[list[str]]:
    """k responses per task (for comparisons), seeded."""
    model, tokenizer, template = load(directory)
    params = SamplingParams(do_sample=True, temperature=temperature)
    prompts = rendered(template, tasks)
    out = []
    for i in range(0, len(prompts), batch):
        done = complete(model, tokenizer, prompts[i: i + batch], max_new_tokens, params=params,
                        num_return_sequences=k, seed=seed + i)
        out += [[c.completion for c in done[j * k: (j + 1) * k]] for j in range(len(done) // k)]
    return out


@torch.no_grad()
def best_of(directory: str, reward_model: str, tasks: list[Task], world: World, n: int, *, temperature: float,
            max_new_tokens: int, seed: int, batch: int = 16) -> Samples:
    """Best-of-n from `directory`'s samples, picked by the reward model."""
    model, tokenizer, template = load(directory)
    rm = RewardModel.from_pretrained(reward_model)
    params = SamplingParams(do_sample=True, temperature=temperature)
    prompts = rendered(template, tasks)
    responses = []
    for i in range(0, len(prompts), batch):
        ranked = best_of_n(model, tokenizer, rm, prompts[i: i + batch], n, max_new_tokens, params=params,
                           seed=seed + i)
        responses += [group[0].completion for group in ranked]
    return Samples(responses, [world.score(t, r) for t, r in zip(tasks, responses)])


@torch.no_grad()
def reward_scores(reward_model: str, tasks: list[Task], responses: list[str]) -> list[float]:
    rm = RewardModel.from_pretrained(reward_model)
    tokenizer, template = Tokenizer.for_model(reward_model), PromptTemplate.for_model(reward_model)
    return rm.score_texts(tokenizer, rendered(template, tasks), responses).tolist()


@torch.no_grad()
def sequence_logprobs(directory: str, tasks: list[Task], responses: list[str], *, temperature: float) -> list[float]:
    """log p(response + EOS | prompt) under `directory`'s model at `temperature`, per task."""
    model, tokenizer, template = load(directory)
    eos = tokenizer.eos_token_id
    out = []
    for task, response in zip(tasks, responses):
        prompt = tokenizer.encode(template.render(task.prompt))
        answer = tokenizer.encode(response) + [eos]
        ids = torch.tensor([prompt + answer])  # [1, T]
        logits = model(ids[:, :-1])[0, len(prompt) - 1:].float() / temperature  # [R, V]
        out.append(float(logits.log_softmax(-1).gather(-1, torch.tensor(answer)[:, None]).sum()))
    return out


def win_rate(scores: list[float], baseline: list[float]) -> float:
    """Share of prompts where `scores` beats `baseline` (ties count half), as a labeler's pairwise preference."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, baseline))
    return wins / len(scores)


def paired_difference(scores: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean of scores - baseline over the same prompts, and its standard error (sd of the differences / sqrt n)."""
    diffs = [a - b for a, b in zip(scores, baseline)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(len(diffs) - 1, 1)
    return mean, (var / len(diffs)) ** 0.5


def ranking_accuracy(rewards: list[list[float]], labels: list[list[float]]) -> tuple[float, int]:
    """Share of response pairs (within a prompt, labels differing) that the rewards order as the labels do."""
    right = total = 0
    for r, y in zip(rewards, labels):
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                if y[i] != y[j]:
                    total += 1
                    right += (r[i] > r[j]) == (y[i] > y[j])
    return (right / total if total else float("nan")), total
