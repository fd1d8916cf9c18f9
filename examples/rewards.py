"""Rule-based rewards for `minigpt-ppo --reward-fn examples/rewards.py:NAME` (demos and tests, not a reward model).

Each function takes the prompts and the sampled responses (EOS removed) as strings and returns one float per
response. Raise, or return NaN, and the run stops with one error line naming the function.
"""

from __future__ import annotations


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Short, finished answers: 1 for an answer of 1 to 12 words ending in '.', '!' or '?', less as it grows,
    -1 for an empty one."""
    scores = []
    for response in responses:
        words = response.split()
        if not words:
            scores.append(-1.0)
            continue
        finished = response.rstrip().endswith((".", "!", "?"))
        scores.append((0.5 if finished else 0.0) + 0.5 * min(1.0, 12 / len(words)) - 0.5 * (len(words) > 40))
    return scores


def mentions_prompt(prompts: list[str], responses: list[str]) -> list[float]:
    """Relevance by word overlap: the share of the prompt's longer words (4+ letters) the response repeats."""
    scores = []
    for prompt, response in zip(prompts, responses):
        wanted = {w.strip(".,!?\"'").lower() for w in prompt.split() if len(w.strip(".,!?\"'")) >= 4}
        said = {w.strip(".,!?\"'").lower() for w in response.split()}
        scores.append(len(wanted & said) / len(wanted) if wanted else 0.0)
    return scores
