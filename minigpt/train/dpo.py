"""Direct preference optimisation (Rafailov et al. 2023): the policy learns from comparisons directly.

For a pair (y_w preferred to y_l) of prompt x, with log-ratios against the frozen reference (the start model)
h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]:

- sigmoid (default): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps = label smoothing);
- ipo: (h' - 1 / (2 beta))^2, with h' built from per-token *mean* log-probs (Azar et al. 2023).

Sequence log-probs are sums over the response tokens (+ EOS) given the rendered prompt; every response of a
record is one row of the same forward pass. K-wise records average their C(K,2) pair losses; a step's loss is the
mean over its records. The implicit reward of a response is beta (log pi - log pi_ref).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import Transformer
from .config import TrainConfig, TrainingError
from .data import IGNORE_INDEX
from .objective import Objective, frozen_start_model
from .preferences import (
    PreferenceBatch,
    PreferenceExample,
    collate_preferences,
    load_preferences,
    per_record_mean,
    with_ref_logps,
)
from .run import Run, TrainResult, run_training

LOSSES = ("sigmoid", "ipo")


@dataclass(frozen=True)
class DPOConfig(TrainConfig):
    """TrainConfig plus DPO's settings (defaults: TRL's beta 0.1 and lr 1e-6, one epoch)."""

    epochs: float = 1.0
    lr: float = 1e-6
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid | ipo
    label_smoothing: float = 0.0  # conservative DPO (sigmoid only)
    precompute_ref: bool = True  # reference log-probs computed once before training; else the reference stays loaded

    def check(self) -> None:
        super().check()
        if not self.beta > 0:
            raise TrainingError(f"beta must be > 0, got {self.beta}")
        if self.loss not in LOSSES:
            raise TrainingError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0 <= self.label_smoothing < 0.5:
            raise TrainingError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss != "sigmoid":
            raise TrainingError("label_smoothing applies to the sigmoid loss only")


def sequence_logps(model: Transformer, input_ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: the sum of log p(target) over the positions with a target [R], and their number [R].
    The LM head runs only on those positions."""
    hidden = model.features(input_ids)  # [R, T, C]
    keep = targets != IGNORE_INDEX  # [R, T]
    token_logps, _ = model.token_logprobs(hidden[keep], targets[keep])  # [N], never the [N, V] logits
    rows = keep.nonzero()[:, 0]  # [N]
    sums = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps), keep.sum(-1)


def dpo_pair_losses(policy: Tensor, reference: Tensor, counts: Tensor, batch: PreferenceBatch, *, beta: float,
                    loss: str = "sigmoid", label_smoothing: float = 0.0) -> Tensor:
    """Loss of every pair [P] from the rows' summed log-probs [R] under the policy and the reference."""
    if loss == "ipo":  # per-token mean log-probs
        policy, reference = policy / counts, reference / counts
    h = (policy[batch.better] - policy[batch.worse]) - (reference[batch.better] - reference[batch.worse])  # [P]
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


class DPOLoss(nn.Module):
    """Summed per-record DPO loss of a micro-batch; the reference log-probs come with the batch (precomputed)
    or from `reference`, a frozen copy of the start model."""

    def __init__(self, policy: Transformer, reference: Transformer | None, config: DPOConfig) -> None:
        super().__init__()
        self.policy = policy
        self.reference = reference
        self.config = config

    def forward(self, **fields: Tensor) -> Tensor:
        batch = PreferenceBatch(**fields)
        policy, counts = sequence_logps(self.policy, batch.input_ids, batch.targets)
        reference = batch.ref_logps if batch.ref_logps is not None else reference_logps(self.reference, batch)
        pairs = dpo_pair_losses(policy, reference.to(policy.dtype), counts, batch, beta=self.config.beta,
                                loss=self.config.loss, label_smoothing=self.config.label_smoothing)
        return per_record_mean(pairs, batch.pair_record, batch.num_records).sum()


@torch.no_grad()
def reference_logps(reference: Transformer | None, batch: PreferenceBatch) -> Tensor:
    if reference is None:
        raise TrainingError("no reference log-probs: precompute them or keep the reference model loaded")
    return sequence_logps(reference, batch.input_ids, batch.targets)[0]


class DPO(Objective):
    """Preference records -> a policy (an ordinary LM checkpoint) preferring the chosen responses."""

    name = "dpo"
    config_class = DPOConfig

    def __init__(self, config: DPOConfig) -> None:
        super().__init__(config)
        self.reference: Transformer | None = None
        self.saved_refs: dict[str, Tensor] = {}
        self.refs: dict[str, Tensor] = {}

    def load_data(self, path, tokenizer, template, max_len):
        return load_preferences(path, tokenizer, template, max_len, skip_bad=self.config.skip_bad,
                                columns=self.config.columns)

    def collate(self, items, pad_id):
        return collate_preferences(items, pad_id)

    def tokens(self, item: PreferenceExample) -> int:
        return sum(len(e.ids) - 1 for e in item.responses)

    def prepare(self, run: Run) -> None:
        """Reference log-probs of every train and eval response, once (or the frozen reference model)."""
        if not self.config.precompute_ref:
            self.reference = frozen_start_model(self.config, run.device)
            return
        for name in ("train", "eval"):
            items = getattr(run, f"{name}_set")
            if name in self.saved_refs:
                flat = self.saved_refs[name].tolist()
            elif run.resumed:
                raise TrainingError(f"cannot resume: {run.out} holds no reference log-probs for the {name} data")
            else:
                run.log(f"computing the reference log-probs of the {len(items)} {name} records ...")
                flat = self._compute_refs(run.model, items, batch_size=run.micro, device=run.device,
                                          autocast=run.autocast, pad_id=run.pad_id)
            self.refs[name] = torch.tensor(flat, dtype=torch.float64)
            attached, start = [], 0
            for item in items:
                k = len(item.responses)
                attached.append(with_ref_logps(item, flat[start: start + k]))
                start += k
            if start != len(flat):
                raise TrainingError(f"cannot resume: the saved reference log-probs do not match the {name} data")
            setattr(run, f"{name}_set", attached)

    @staticmethod
    @torch.no_grad()
    def _compute_refs(model: Transformer, items: list[PreferenceExample], *, batch_size: int, device: torch.device,
                      autocast, pad_id: int) -> list[float]:
        was_training = model.training
        model.eval()
        flat: list[float] = []
        for i in range(0, len(items), batch_size):
            batch = collate_preferences(items[i: i + batch_size], pad_id).to(device)
            with autocast or nullcontext():
                flat += sequence_logps(model, batch.input_ids, batch.targets)[0].tolist()
        model.train(was_training)
        return flat

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"ref_logps.{name}": values for name, values in self.refs.items()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.saved_refs = {k.removeprefix("ref_logps."): v for k, v in tensors.items() if k.startswith("ref_logps.")}

    def loss_module(self, model):
        return DPOLoss(model, self.reference, self.config)

    @torch.no_grad()
    def evaluate(self, model, items, *, batch_size, device, autocast):
        return dpo_metrics(model, self.reference, items, self.config, batch_size=batch_size, device=device,
                           autocast=autocast)

    def progress_fields(self, metrics):
        return {"eval": f"{metrics['loss']:.4f}", "acc": f"{metrics['accuracy']:.3f}"}


@torch.no_grad()
def dpo_metrics(policy: Transformer, reference: Transformer | None, items: list[PreferenceExample], config: DPOConfig, *,
                batch_size: int = 8, device: torch.device | None = None,
                autocast: torch.autocast | None = None) -> dict[str, float]:
    """loss; accuracy (share of pairs whose implicit reward beta (log pi - log pi_ref) ranks them right);
    margin (mean implicit-reward gap); chosen/rejected mean implicit rewards; kl (mean per-token log-ratio
    log pi - log pi_ref on each record's best response: a sample estimate of the KL along chosen responses)."""
    device = device or policy.device
    loss = right = pairs = 0.0
    margin = chosen = rejected = kl = 0.0
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        batch = collate_preferences(chunk, policy.config.eos_token_id).to(device)
        with autocast or nullcontext():
            logps, counts = sequence_logps(policy, batch.input_ids, batch.targets)
            ref = batch.ref_logps if batch.ref_logps is not None else reference_logps(reference, batch)
        logps, ref = logps.double(), ref.double()
        pair_losses = dpo_pair_losses(logps, ref, counts, batch, beta=config.beta, loss=config.loss,
                                      label_smoothing=config.label_smoothing)
        loss += float(per_record_mean(pair_losses, batch.pair_record, batch.num_records).sum())
        rewards = config.beta * (logps - ref)  # [R]
        gaps = rewards[batch.better] - rewards[batch.worse]
        right += float((gaps > 0).sum())
        pairs += gaps.numel()
        margin += float(gaps.sum())
        chosen += float(rewards[batch.better].sum())
        rejected += float(rewards[batch.worse].sum())
        best = torch.tensor([0] + [len(e.responses) for e in chunk[:-1]], device=device).cumsum(0)  # [N]
        kl += float(((logps - ref)[best] / counts[best]).sum())
    return {"loss": loss / len(items), "accuracy": right / pairs, "margin": margin / pairs,
            "chosen_reward": chosen / pairs, "rejected_reward": rejected / pairs, "kl": kl / len(items)}


def train_dpo(config: DPOConfig, *, resume: bool = False, overrides: dict | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None,
              should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """DPO on preference records (or, with `resume`, continue the run saved in `config.out`)."""
    return run_training(DPO, config, resume=resume, overrides=overrides, progress=progress, log=log,
                        should_stop=should_stop)
