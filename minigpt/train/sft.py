"""Supervised fine-tuning (InstructGPT step 1): train GPT-2 on demonstrations, the loss on the responses only.

The data, template and masked labels are `minigpt.train.data`'s; the loop is `minigpt.train.run`'s. The step loss is
the summed cross entropy of all response tokens (+ EOS) in the global batch divided by their number.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..model import Transformer
from .config import TrainConfig
from .data import IGNORE_INDEX, Batch, Example, collate, load_examples
from .objective import Objective
from .run import TrainResult, run_training


class ResponseLoss(nn.Module):
    """Sum of the cross entropy over target positions (not mean: the caller divides by the global count).

    The LM head runs only where a target counts: prompt and padding positions cost no [V]-wide logits.
    A module (not a function) so DistributedDataParallel can wrap it.
    """

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        hidden = self.model.features(input_ids)  # [B, T, C]
        keep = targets != IGNORE_INDEX  # [B, T]
        return self.model.summed_nll(hidden[keep], targets[keep])  # never the [N, V] logits at once


@torch.no_grad()
def evaluate(model: Transformer, examples: list[Example], *, batch_size: int, device: torch.device,
             autocast: torch.autocast | None = None) -> float:
    """Mean cross entropy per response token (+ EOS) over `examples`; exp of it is their perplexity."""
    was_training = model.training
    model.eval()
    loss_fn = ResponseLoss(model)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i: i + batch_size], model.config.eos_token_id).to(device)
        with autocast or nullcontext():
            total += float(loss_fn(batch.input_ids, batch.targets))
        count += batch.num_targets
    model.train(was_training)
    return total / max(1, count)


class SFT(Objective):
    """Demonstrations -> masked next-token cross entropy on the responses."""

    name = "sft"
    config_class = TrainConfig

    def load_data(self, path, tokenizer, template, max_len):
        return load_examples(path, tokenizer, template, max_len, skip_bad=self.config.skip_bad,
                             columns=self.config.columns)

    def collate(self, items: list[Example], pad_id: int) -> Batch:
        return collate(items, pad_id)

    def weight(self, item: Example) -> int:
        return len(item.ids) - item.prompt_len  # response tokens (+ EOS): the loss is their mean

    def tokens(self, item: Example) -> int:
        return len(item.ids) - 1

    def loss_module(self, model: Transformer) -> nn.Module:
        return ResponseLoss(model)

    def evaluate(self, model, items, *, batch_size, device, autocast):
        return {"loss": evaluate(model, items, batch_size=batch_size, device=device, autocast=autocast)}


def train(config: TrainConfig, *, resume: bool = False, overrides: dict | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, should_stop: Callable[[int], bool] | None = None) -> TrainResult:
    """Fine-tune on demonstrations (or, with `resume`, continue the run saved in `config.out`)."""
    return run_training(SFT, config, resume=resume, overrides=overrides, progress=progress, log=log,
                        should_stop=should_stop)


def resume(out, *, overrides: dict | None = None, **kwargs) -> TrainResult:
    """Continue the SFT run checkpointed in `out` with its saved settings (arguments as `train`)."""
    return train(TrainConfig(data="", out=str(out)), resume=True, overrides=overrides, **kwargs)
