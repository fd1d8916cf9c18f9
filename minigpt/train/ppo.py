"""PPO against a reward, with a per-token KL penalty to the start (SFT) policy: InstructGPT step 3.

One training step is one PPO iteration (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2; the details follow
Huang et al. 2023, see `minigpt.train.rl`):

1. rollouts: `batch_size` prompts (all processes together), one sampled response each, KV-cached, at the
   sampling temperature; the log-probs pi_old are gathered while sampling;
2. scores: the reward model or reward function on (prompt, response) texts, minus `missing_eos_penalty` for a
   response that never produced EOS;
3. per-token rewards: -beta (log pi_old - log pi_ref) at every response token + the score at the last one
   (`kl_penalty_rewards`); optionally whitened without shifting their mean;
4. advantages by GAE (gamma, lambda) on the value head's estimates, then whitened;
5. `ppo_epochs` passes over the rollouts in `mini_batches` shuffled minibatches, one AdamW step each, on
   PPO's clipped policy loss + vf_coef x the clipped value loss (`PPOLoss`); with PPO-ptx (InstructGPT's
   eq. 2, gamma E[log pi(x_pretrain)]) plus ptx_coef x the mean cross entropy of random raw-text windows;
6. with `target_kl`, beta adapts: beta <- beta (1 + clip(KL / target - 1, +-0.2) n / horizon).

The value function: with `value_model="shared"` (the default) a scalar head on the policy's body (like the reward
model's `score`; initialised from it when a reward model is given); with `value_model="separate"` its own network,
a copy of the reward model (InstructGPT: "we initialize the value function from the RM"; TRL does the same), or of
the start policy with a new head under a reward function: its first values are then the reward model's own
scores, and the value loss never pulls on the policy's weights. The policy is saved as an ordinary LM checkpoint;
the shared head beside it in `value_head.safetensors`, a separate value network in `value_model/` (a reward-model
checkpoint), so `GPT.from_pretrained` and transformers load the policy alone.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import GPTConfig
from ..model import Transformer
from ..reward_model import RewardModel
from .config import TrainConfig, TrainingError
from .corpus import TokenWindows, shared_token_file
from .env import all_reduce_
from .lm import collate_windows
from .objective import Objective, StepResult, frozen_start_model
from .prompts import Prompt, load_prompts
from .rl import adaptive_kl_coef, gae, kl_penalty_rewards, masked_sum, policy_loss, value_loss, whiten
from .rollout import Rollouts, response_outputs, sample_responses
from .run import Run, TrainResult, run_training
from .scorers import RewardModelScorer, make_scorer
from .sft import ResponseLoss

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_HEAD_KEY = "value_head.weight"  # [1, n_embd], no bias (like GPT2ForSequenceClassification's score)
VALUE_MODEL_DIR = "value_model"  # value_model="separate": the value network, saved as a reward-model checkpoint
VALUE_MODELS = ("shared", "separate")
# Per-token sums PPOLoss reports for a micro-batch, in this order.
LOSS_STATS = ("pg_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl", "entropy", "ptx_loss")


@dataclass(frozen=True)
class PPOConfig(TrainConfig):
    """TrainConfig plus PPO's settings. `data` is the prompts file; `batch_size` is rollouts per step.
    Defaults follow TRL / Huang et al.: kl_coef 0.05, temperature 0.7, 4 PPO epochs, clip 0.2, value clip 0.2,
    vf_coef 0.1, gamma 1, lambda 0.95, Adam eps 1e-5, no weight decay, lr 1e-5."""

    epochs: float = 1.0  # passes over the prompts
    batch_size: int = 16
    lr: float = 1e-5
    warmup_steps: int | None = 0
    weight_decay: float = 0.0
    eps: float = 1e-5
    reward_model: str | None = None  # a RewardModel checkpoint directory ...
    reward_fn: str | None = None  # ... or "FILE.py:FUNCTION": (prompts, responses) -> list of floats
    max_new_tokens: int = 64
    temperature: float = 0.7  # sampling temperature, also applied to every log-prob
    kl_coef: float = 0.05  # beta: weight of the per-token KL penalty (the start value with target_kl)
    target_kl: float | None = None  # adaptive beta: the mean sequence KL to steer towards
    kl_horizon: int = 10000  # adaptive beta: rollouts over which a KL error is corrected
    ppo_epochs: int = 4
    mini_batches: int = 1  # optimizer steps per PPO epoch
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    value_model: str = "shared"  # "shared": a head on the policy's body; "separate": a copy of the reward model
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None  # subtracted from the score of a response without EOS
    ptx_data: str | None = None  # PPO-ptx: a raw-text corpus (file, directory or glob) ...
    ptx_coef: float = 0.0  # ... whose mean next-token cross entropy, times this, joins every update's loss
    ptx_batch_size: int | None = None  # windows per mini-batch, all processes (default: rollouts per mini-batch)
    ptx_block_size: int = 256  # tokens per window

    def check(self) -> None:
        super().check()
        if (self.reward_model is None) == (self.reward_fn is None):
            raise TrainingError("give exactly one of --reward-model DIR or --reward-fn FILE.py:FUNCTION")
        if self.max_new_tokens < 1 or self.ppo_epochs < 1 or self.mini_batches < 1 or self.kl_horizon < 1:
            raise TrainingError("max_new_tokens, ppo_epochs, mini_batches and kl_horizon must be >= 1")
        if not self.temperature > 0:
            raise TrainingError(f"temperature must be > 0 (PPO samples), got {self.temperature}")
        if self.kl_coef < 0 or (self.target_kl is not None and not self.target_kl > 0):
            raise TrainingError("kl_coef must be >= 0 and target_kl > 0")
        if not (self.cliprange > 0 and self.cliprange_value > 0 and self.vf_coef >= 0):
            raise TrainingError("cliprange and cliprange_value must be > 0, vf_coef >= 0")
        if self.value_model not in VALUE_MODELS:
            raise TrainingError(f"value_model must be one of {', '.join(VALUE_MODELS)}, got {self.value_model!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise TrainingError("gamma and lam must be in [0, 1]")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise TrainingError("missing_eos_penalty must be >= 0 (it is subtracted)")
        if (self.ptx_data is None) != (self.ptx_coef == 0):
            raise TrainingError("PPO-ptx needs both --ptx-data and a --ptx-coef > 0")
        if self.ptx_coef < 0 or self.ptx_block_size < 1 or (self.ptx_batch_size or 1) < 1:
            raise TrainingError("ptx_coef must be >= 0, ptx_block_size and ptx_batch_size >= 1")


class PolicyWithValue(nn.Module):
    """The trained module: the policy (a Transformer) and its value function, either a scalar head reading the
    policy's final hidden states (`value_head`) or a separate network (`critic`: a body and its `score` head)."""

    def __init__(self, policy: Transformer, value_head: nn.Linear | None = None,
                 critic: RewardModel | None = None) -> None:
        super().__init__()
        if (value_head is None) == (critic is None):
            raise ValueError("give exactly one: a value head on the policy or a separate critic")
        self.policy = policy
        self.value_head = value_head
        self.critic = critic

    def value_network(self) -> tuple[Transformer, nn.Linear]:
        """(the body whose final hidden states the values read, the [1, n_embd] head that reads them)."""
        if self.critic is not None:
            return self.critic.transformer, self.critic.score
        return self.policy, self.value_head


def new_value_head(n_embd: int, *, init: Tensor | None = None, seed: int = 0) -> nn.Linear:
    """A bias-free [1, n_embd] head: a copy of `init` (the reward model's score) or N(0, 1/(n_embd + 1)), seeded."""
    head = nn.Linear(n_embd, 1, bias=False)
    with torch.no_grad():
        if init is not None:
            head.weight.copy_(init.reshape(1, n_embd))
        else:
            gen = torch.Generator().manual_seed(seed)
            head.weight.copy_(torch.randn(1, n_embd, generator=gen) / math.sqrt(n_embd + 1))
    return head


class PPOLoss(nn.Module):
    """A micro-batch's summed per-token loss (policy + vf_coef x value) and its summed statistics."""

    def __init__(self, model: PolicyWithValue, config: PPOConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                old_logprobs: Tensor, old_values: Tensor, advantages: Tensor, returns: Tensor,
                ptx_input_ids: Tensor | None = None, ptx_targets: Tensor | None = None,
                ptx_weight: float = 0.0) -> tuple[Tensor, Tensor]:
        """(loss, stats): the summed per-token PPO loss (+ ptx_weight x the summed cross entropy of the ptx
        windows, when given) and the summed LOSS_STATS (+ that cross entropy sum)."""
        c = self.config
        fields = (query_ids, query_mask, response_ids, response_mask)
        shared = self.model.critic is None
        out = response_outputs(self.model.policy, *fields, temperature=c.temperature, entropy=True,
                               value_head=self.model.value_head if shared else None)
        values = out.values if shared else critic_values(self.model, fields, c.temperature)  # [b, R]
        pg, pg_clipped = policy_loss(out.logprobs, old_logprobs, advantages, c.cliprange)  # [b, R]
        vf, vf_clipped = value_loss(values, old_values, returns, c.cliprange_value)  # [b, R]
        mask = response_mask
        loss = masked_sum(pg + c.vf_coef * vf, mask)
        log_ratio = out.logprobs - old_logprobs
        ptx = torch.zeros((), device=loss.device)
        if ptx_input_ids is not None:
            ptx = ResponseLoss(self.model.policy)(ptx_input_ids, ptx_targets)  # summed next-token cross entropy
            loss = loss + ptx_weight * ptx
        stats = torch.stack([masked_sum(pg, mask), masked_sum(vf, mask), masked_sum(pg_clipped.float(), mask),
                             masked_sum(vf_clipped.float(), mask), masked_sum(0.5 * log_ratio ** 2, mask),
                             masked_sum(out.entropy, mask), ptx.float()]).detach()
        return loss, stats


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step's sampling and shuffling on one process (so a resumed run draws the same)."""
    return (seed * 1_000_003 + step) * 1024 + rank


class PPO(Objective):
    """Prompts + a reward -> a policy (ordinary LM checkpoint) that earns more reward near its start model."""

    name = "ppo"
    config_class = PPOConfig
    main_metric = "score"

    def __init__(self, config: PPOConfig) -> None:
        super().__init__(config)
        self.reference: Transformer | None = None
        self.scorer: Callable[[list[Prompt], list[str]], Tensor] | None = None
        self.kl_coef = config.kl_coef
        self.tokenizer = None
        self.ptx: TokenWindows | None = None  # PPO-ptx windows

    # ----- data and model

    def load_data(self, path, tokenizer, template, max_len):
        budget = max_len - self.config.max_new_tokens
        if budget < 1:
            raise TrainingError(f"max_new_tokens {self.config.max_new_tokens} leaves no room for a prompt in "
                                f"{max_len} tokens")
        return load_prompts(path, tokenizer, template, budget, skip_bad=self.config.skip_bad,
                            columns=self.config.columns)

    def tokens(self, item: Prompt) -> int:
        return len(item.ids)

    def load_model(self, source: str, *, resumed: bool, model_config: GPTConfig) -> PolicyWithValue:
        policy = super().load_model(source, resumed=resumed, model_config=model_config)
        if self.config.value_model == "separate":
            return PolicyWithValue(policy, critic=self.load_critic(Path(source), policy, resumed=resumed))
        if resumed:
            return PolicyWithValue(policy, read_value_head(Path(source), policy.config.n_embd))
        # a fresh head; `prepare` copies the reward model's score into it when there is one
        return PolicyWithValue(policy, new_value_head(policy.config.n_embd, seed=self.config.seed))

    def load_critic(self, source: Path, policy: Transformer, *, resumed: bool) -> RewardModel:
        """The separate value network: the saved one (resume), else a copy of the reward model, else of the start
        policy with a new head (reward function)."""
        from ..errors import CheckpointError, MiniGPTError

        if resumed:
            try:
                return RewardModel.from_pretrained(source / VALUE_MODEL_DIR)
            except MiniGPTError as exc:
                raise CheckpointError(f"cannot resume the value network: {exc}") from None
        if self.config.reward_model is not None:
            return RewardModel.from_pretrained(self.config.reward_model)
        return RewardModel.from_lm(copy.deepcopy(policy), seed=self.config.seed)

    def lm(self, model: PolicyWithValue) -> Transformer:
        return model.policy

    def prepare(self, run: Run) -> None:
        config = self.config
        world = run.dist.world
        per_process = config.batch_size // world
        if per_process % config.mini_batches:
            raise TrainingError(f"{per_process} rollouts per process do not split into {config.mini_batches} "
                                "equal mini-batches")
        if config.micro_batch_size is None:  # default: one forward pass per mini-batch
            run.micro = per_process // config.mini_batches
            run.accumulation = per_process // run.micro
        if (per_process // config.mini_batches) % run.micro:
            raise TrainingError(f"a mini-batch of {per_process // config.mini_batches} rollouts is not a multiple "
                                f"of micro_batch_size {run.micro}")
        self.reference = frozen_start_model(config, run.device)
        if config.ptx_data is not None:
            if config.ptx_block_size > run.max_len:
                raise TrainingError(f"ptx_block_size {config.ptx_block_size} exceeds the model's context of "
                                    f"{run.max_len} tokens")
            token_file = shared_token_file(config.ptx_data, run.tokenizer, progress=self.show_progress)
            self.ptx = TokenWindows(token_file.tokens(), config.ptx_block_size)
            if self.ptx.max_offset < 0:
                raise TrainingError(f"--ptx-data {config.ptx_data} holds fewer than {config.ptx_block_size + 1} tokens")
            run.log(f"PPO-ptx: {token_file.num_tokens:,} tokens of {config.ptx_data}, coefficient {config.ptx_coef}")
        self.scorer = make_scorer(config.reward_model, config.reward_fn, device=run.device, batch_size=run.micro)
        self.tokenizer = run.tokenizer
        if run.model.critic is not None:
            self.check_critic(run)
        elif isinstance(self.scorer, RewardModelScorer) and not run.resumed:
            score = self.scorer.model.score.weight
            if score.shape == run.model.value_head.weight.shape:
                with torch.no_grad():
                    run.model.value_head.weight.copy_(score)
                run.log("value head initialised from the reward model's score head")

    def check_critic(self, run: Run) -> None:
        """A separate value network reads the policy's token ids: it must share their vocabulary and hold the
        longest prompt + response."""
        critic = run.model.critic.config
        if isinstance(self.scorer, RewardModelScorer) and \
                self.scorer.tokenizer.fingerprint() != run.tokenizer.fingerprint():
            raise TrainingError("--value-model separate copies the reward model, whose tokenizer differs from the "
                                "policy's; use --value-model shared")
        if critic.n_positions < run.max_len:
            raise TrainingError(f"the value network holds {critic.n_positions} positions, fewer than the "
                                f"{run.max_len} of prompt + response; lower --max-len")
        run.log(f"separate value network ({critic.n_layer} layers, {critic.n_embd} wide), initialised from "
                + ("the reward model" if self.config.reward_model else "the start policy with a new head"))

    def loss_module(self, model):
        return PPOLoss(model, self.config)

    def state_tensors(self) -> dict[str, Tensor]:
        return {"kl_coef": torch.tensor([self.kl_coef], dtype=torch.float64)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if "kl_coef" in tensors:
            self.kl_coef = float(tensors["kl_coef"][0])

    def save_model(self, model, directory, *, tokenizer, template, extra):
        from safetensors.torch import save_file

        from ..checkpoint import save_pretrained

        def files(tmp: Path) -> None:
            extra(tmp)
            if model.critic is not None:
                model.critic.save_pretrained(tmp / VALUE_MODEL_DIR, tokenizer=tokenizer, template=template)
                return
            head = model.value_head.weight.detach().to("cpu", torch.float32).contiguous()
            save_file({VALUE_HEAD_KEY: head}, str(tmp / VALUE_HEAD_FILE))

        save_pretrained(model.policy, directory, tokenizer=tokenizer, template=template, extra=files)

    # ----- rollouts

    @torch.no_grad()
    def rollouts(self, model: PolicyWithValue, prompts: list[Prompt], *, generator: torch.Generator | None,
                 micro: int, autocast=None) -> tuple[Rollouts, Tensor, Tensor]:
        """Sample, then score: (rollouts with old values, scores [B] (after the missing-EOS penalty), reference
        log-probs [B, R])."""
        c = self.config
        policy = model.policy
        with autocast or nullcontext():
            batch = sample_responses(policy, [list(p.ids) for p in prompts], max_new_tokens=c.max_new_tokens,
                                     temperature=c.temperature, eos_id=policy.config.eos_token_id,
                                     generator=generator)
            values, ref_logprobs = [], []
            for i in range(0, len(prompts), micro):
                part = batch.rows(torch.arange(i, min(i + micro, len(prompts)), device=policy.device))
                fields = (part.query_ids, part.query_mask, part.response_ids, part.response_mask)
                values.append(critic_values(model, fields, c.temperature))
                ref_logprobs.append(response_outputs(self.reference, *fields, temperature=c.temperature).logprobs)
        batch.values = torch.cat(values).float()
        texts = [self.tokenizer.decode([t for t, m in zip(ids, keep) if m and t != batch.eos_id])
                 for ids, keep in zip(batch.response_ids.tolist(), batch.response_mask.bool().tolist())]
        scores = self.scorer(prompts, texts).to(policy.device).float()  # [B]
        if c.missing_eos_penalty:
            scores = scores - c.missing_eos_penalty * (~batch.ended).float()
        return batch, scores, torch.cat(ref_logprobs).float()

    # ----- one PPO iteration

    def train_step(self, run: Run) -> StepResult:
        c, dist = self.config, run.dist
        started = time.perf_counter()
        indices = self.batch_indices(run, run.step)
        share = c.batch_size // dist.world
        prompts = [run.train_set[i] for i in indices[dist.rank * share: (dist.rank + 1) * share]]
        seed = step_seed(c.seed, run.step, dist.rank)
        sampler = torch.Generator(device=run.device).manual_seed(seed)
        batch, scores, ref_logprobs = self.rollouts(run.model, prompts, generator=sampler, micro=run.micro,
                                                    autocast=run.autocast)
        mask = batch.response_mask
        beta = self.kl_coef
        rewards, kl = kl_penalty_rewards(scores, batch.logprobs, ref_logprobs, mask, beta)
        if c.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False, dist=dist)
        advantages, batch.returns = gae(rewards, batch.values, mask, gamma=c.gamma, lam=c.lam)
        batch.advantages = whiten(advantages, mask, dist=dist)

        totals = self.optimize(run, batch, torch.Generator().manual_seed(seed))
        rollout_sums = torch.tensor([float(scores.sum()), float(kl.sum()), float(mask.sum()),
                                     float(batch.ended.sum()), float(len(prompts))], dtype=torch.float64)
        score_sum, kl_sum, n_tokens, n_ended, n = all_reduce_(rollout_sums, dist).tolist()
        mean_kl = kl_sum / n
        if c.target_kl is not None:
            self.kl_coef = adaptive_kl_coef(beta, mean_kl, target=c.target_kl, n=int(n), horizon=c.kl_horizon)
        seconds = time.perf_counter() - started
        stats = {"score": score_sum / n, "kl": mean_kl, "kl_coef": beta, "length": n_tokens / n,
                 "eos": n_ended / n, **totals, "seconds": seconds, "tokens_per_second": n_tokens / seconds}
        loss = stats["pg_loss"] + c.vf_coef * stats["value_loss"]
        return StepResult(loss, int(mask.sum()), stats)

    def optimize(self, run: Run, batch: Rollouts, shuffle: torch.Generator) -> dict[str, float]:
        """ppo_epochs x mini_batches AdamW steps on the rollouts; the token-weighted means of LOSS_STATS."""
        c, dist = self.config, run.dist
        n = batch.query_ids.shape[0]
        size = n // c.mini_batches
        sums = torch.zeros(len(LOSS_STATS), dtype=torch.float64)
        tokens = ptx_tokens = 0.0
        for _ in range(c.ppo_epochs):
            order = torch.randperm(n, generator=shuffle).to(run.device)
            for start in range(0, n, size):
                minibatch = order[start: start + size]
                count = float(all_reduce_(batch.response_mask[minibatch].sum().double().cpu().reshape(1), dist)[0])
                parts = minibatch.split(run.micro)
                for i, part in enumerate(parts):
                    fields = batch.rows(part).training_fields()
                    if self.ptx is not None and i == len(parts) - 1:  # the ptx windows ride with the last part
                        fields.update(self.ptx_fields(run, shuffle, count))
                        ptx_tokens += fields["ptx_targets"].numel() * dist.world
                    with run.no_sync(i < len(parts) - 1), run.autocast or nullcontext():
                        loss, part_stats = run.loss_module(**fields)
                    (loss * dist.world / max(count, 1.0)).backward()  # DDP averages over processes
                    sums += part_stats.double().cpu()
                run.optimizer_step()
                tokens += count
        sums = all_reduce_(sums, dist)
        means = dict(zip(LOSS_STATS, (sums / max(tokens, 1.0)).tolist()))
        if self.ptx is None:
            del means["ptx_loss"]
        else:
            means["ptx_loss"] = float(sums[-1]) / ptx_tokens  # mean cross entropy per ptx token
        return means

    def ptx_fields(self, run: Run, generator: torch.Generator, count: float) -> dict:
        """This process's share of a mini-batch's ptx windows, at random offsets drawn from its step generator, and
        the weight that makes their summed cross entropy count as ptx_coef x the mean over all processes."""
        c, dist = self.config, run.dist
        share = max(1, (c.ptx_batch_size or c.batch_size // c.mini_batches) // dist.world)
        offsets = torch.randint(0, self.ptx.max_offset + 1, (share,), generator=generator).tolist()
        windows = collate_windows([self.ptx.at(o) for o in offsets])
        windows = windows.to(run.device)
        weight = c.ptx_coef * max(count, 1.0) / (windows.targets.numel() * dist.world)
        return {"ptx_input_ids": windows.input_ids, "ptx_targets": windows.targets, "ptx_weight": weight}

    def step_fields(self, stats):
        return {"score": f"{stats['score']:.3f}", "kl": f"{stats['kl']:.3f}", "beta": f"{stats['kl_coef']:.3g}"}

    # ----- evaluation

    @torch.no_grad()
    def evaluate(self, model, items, *, batch_size, device, autocast):
        """Responses sampled for the held-out prompts (the same seed at every evaluation): the mean score (as
        trained: after the missing-EOS penalty), the mean sequence KL to the reference and per token, the mean
        length, the share ending in EOS."""
        c = self.config
        generator = torch.Generator(device=device).manual_seed(c.seed)
        score = kl = tokens = ended = 0.0
        for i in range(0, len(items), batch_size):
            chunk = items[i: i + batch_size]
            batch, scores, ref_logprobs = self.rollouts(model, chunk, generator=generator, micro=batch_size,
                                                        autocast=autocast)
            score += float(scores.sum())
            kl += float(((batch.logprobs - ref_logprobs) * batch.response_mask).sum())
            tokens += float(batch.response_mask.sum())
            ended += float(batch.ended.sum())
        n = len(items)
        return {"score": score / n, "kl": kl / n, "kl_per_token": kl / max(tokens, 1.0), "length": tokens / n,
                "eos": ended / n}

    def progress_fields(self, metrics):
        return {"eval": f"{metrics['score']:.3f}", "eval kl": f"{metrics['kl']:.3f}"}


def critic_values(model: PolicyWithValue, fields: tuple[Tensor, Tensor, Tensor, Tensor],
                  temperature: float) -> Tensor:
    """Values [b, R] of (query_ids, query_mask, response_ids, response_mask) from the value network alone (the
    policy's body and head when shared): no LM head."""
    body, head = model.value_network()
    return response_outputs(body, *fields, temperature=temperature, value_head=head, logprobs=False).values


def read_value_head(directory: Path, n_embd: int) -> nn.Linear:
    """The value head saved beside a PPO checkpoint's policy."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..errors import CheckpointError

    path = directory / VALUE_HEAD_FILE
    try:
        weight = load_file(str(path))[VALUE_HEAD_KEY]
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: {path} is missing") from None
    except (SafetensorError, KeyError, OSError) as exc:
        raise CheckpointError(f"cannot resume: {path} is unreadable ({exc})") from None
    if tuple(weight.shape) != (1, n_embd):
        raise CheckpointError(f"cannot resume: {path} holds shape {list(weight.shape)}, expected [1, {n_embd}]")
    return new_value_head(n_embd, init=weight)


def train_ppo(config: PPOConfig, *, resume: bool = False, overrides: dict | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None,
              should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """PPO on prompts against a reward (or, with `resume`, continue the run saved in `config.out`)."""
    return run_training(PPO, config, resume=resume, overrides=overrides, progress=progress, log=log,
                        should_stop=should_stop)
