"""Best-of-n: sample n responses per prompt and keep the one a reward model scores highest.

The baseline InstructGPT-style work compares PPO against (Nakano et al. 2021, Gao et al. 2022): no training,
n times the sampling cost, and the reward model's judgement applied at inference time.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model import Transformer
from ..reward_model import RewardModel
from ..tokenizer import Tokenizer
from .sampling import SamplingParams
from .text import Completion, complete


def best_of_n(model: Transformer, tokenizer: Tokenizer, reward_model: RewardModel, prompts: str | Sequence[str],
              n: int, max_new_tokens: int, *, params: SamplingParams = SamplingParams(do_sample=True),
              seed: int | None = None, stop: Sequence[str] = (), context: str = "error",
              batch_size: int = 32) -> list[list[Completion]]:
    """Per prompt, its n sampled completions sorted best first by the reward model (each `score` = its reward).
    `prompts` are the texts the model continues (instruction prompts already rendered with the template); the
    reward model reads the same prompt text, the completion, then EOS, as in its training."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    completions = complete(model, tokenizer, prompts, max_new_tokens, params=params, num_return_sequences=n,
                           seed=seed, stop=stop, context=context)  # row = prompt * n + sample
    rewards = reward_model.score_texts(tokenizer, [c.prompt for c in completions],
                                       [c.completion for c in completions], batch_size=batch_size).tolist()
    ranked = []
    for p in range(len(prompts)):
        group = completions[p * n: (p + 1) * n]
        for completion, reward in zip(group, rewards[p * n: (p + 1) * n]):
            completion.score = reward
        ranked.append(sorted(group, key=lambda c: -c.score))  # stable: ties keep sampling order
    return ranked
