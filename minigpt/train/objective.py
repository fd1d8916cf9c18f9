"""What a training objective provides to the shared loop (`Objective`), what a step returns (`StepResult`), and the
start model (loaded, never silently random unless asked) that objectives and references build on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..config import GPTConfig
from ..model import Transformer
from ..tokenizer import Tokenizer
from .config import TrainConfig
from .data import DataReport, PromptTemplate
from .state import file_sha256

if TYPE_CHECKING:
    from .run import Run

# Training keeps the checkpoint's [in, out] weight layout: a layout chosen by timing could differ between the
# first process and a resumed one, and the kernels round differently, so resume would not be bit-exact.
TRAINING_LAYOUTS = "as-is"


@dataclass
class StepResult:
    """What one optimizer step (or one PPO iteration) did."""

    loss: float  # the step's mean loss
    tokens: int  # input tokens processed here (for tokens/s)
    stats: dict[str, float] = field(default_factory=dict)  # the objective's own numbers (logged; see step_fields)



# --------------------------------------------------------------------------- the start model


def start_model_config(model: str, *, random_init: bool) -> GPTConfig:
    """The shape of the model training starts from (a checkpoint's config, or a preset / config.json)."""
    if random_init:
        path = Path(model)
        return GPTConfig.from_json(path) if path.suffix == ".json" else GPTConfig.from_preset(model)
    from ..loading import resolve_checkpoint

    return resolve_checkpoint(model).config


def load_start_model(config: TrainConfig, model_config: GPTConfig) -> Transformer:
    """The weights training starts from: loaded (never silently random) unless random_init asks for it."""
    if not config.random_init:
        from ..loading import load_pretrained

        return load_pretrained(config.model, layouts=TRAINING_LAYOUTS)
    torch.manual_seed(config.seed)
    return Transformer(model_config)


def frozen_start_model(config: TrainConfig, device: torch.device) -> Transformer:
    """The start model again, frozen (eval mode, no gradients): the reference policy of DPO and PPO."""
    model_config = start_model_config(config.model, random_init=config.random_init)
    return load_start_model(config, model_config).to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------- what an objective provides


class Objective:
    """One training objective: its data, trained module, loss, evaluation and checkpoint files.

    Subclasses set `name` and `config_class` and implement the methods that raise NotImplementedError.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    main_metric: ClassVar[str] = "loss"  # the eval metric TrainResult.evals keeps

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.show_progress = True  # the run sets it: False with progress off and on processes other than the first

    # data
    def load_data(self, path: str, tokenizer: Tokenizer, template: PromptTemplate,
                  max_len: int) -> tuple[list[Any], DataReport]:
        """Read, check and tokenize a data file; bad lines raise DataError naming FILE:LINE."""
        raise NotImplementedError

    def data_digest(self, path: str) -> str | None:
        """What identifies the training data for resume (None: not checked). Default: a file's sha256."""
        return file_sha256(path) if Path(path).is_file() else None

    def split_eval(self, items: Any, fraction: float, seed: int) -> tuple[Any, Any]:
        """(train, eval) when no eval data is given. Default: a seeded random `fraction` of the records."""
        from .data import split_eval

        return split_eval(items, fraction, seed)

    def batch_indices(self, run: "Run", step: int) -> list[int]:
        """The global batch of step `step`, as indices for `item`. Default: the seeded epoch permutation."""
        return run.sampler.global_batch(step, self.config.batch_size)

    def item(self, data: Any, index: int) -> Any:
        """One record of `data` (the train set) by an index of `batch_indices`."""
        return data[index]

    def collate(self, items: list[Any], pad_id: int) -> Any:
        """A micro-batch (anything with `.to(device)`) for `loss_module`."""
        raise NotImplementedError

    def weight(self, item: Any) -> int:
        """How many units of the step's mean one record contributes (SFT: response tokens; default 1)."""
        return 1

    def tokens(self, item: Any) -> int:
        """Input tokens one record costs (for the tokens/s figure)."""
        raise NotImplementedError

    # the model
    def load_model(self, source: str, *, resumed: bool, model_config: GPTConfig) -> nn.Module:
        """The module to train: the start model (resumed=False: `config.model`) or the run's checkpoint."""
        from ..loading import load_pretrained

        if resumed:
            return load_pretrained(source, layouts=TRAINING_LAYOUTS)
        return load_start_model(self.config, model_config)

    def lm(self, model: nn.Module) -> Transformer:
        """The GPT-2 inside the trained module."""
        return model  # type: ignore[return-value]

    def prepare(self, run: "Run") -> None:
        """Called once the model and data are ready, before the first step (e.g. DPO's reference log-probs)."""

    def loss_module(self, model: nn.Module) -> nn.Module:
        """A module whose forward(**batch fields) is the micro-batch's summed loss (a scalar); DDP wraps it."""
        raise NotImplementedError

    def train_step(self, run: "Run") -> StepResult:
        """One step of training: by default one optimizer step over the step's global batch of records
        (`Run.supervised_step`); PPO overrides it with rollouts and several optimizer steps."""
        return run.supervised_step()

    def step_fields(self, stats: dict[str, float]) -> dict[str, str]:
        """Progress-line fields from a step's `StepResult.stats`."""
        return {}

    def evaluate(self, model: nn.Module, items: list[Any], *, batch_size: int, device: torch.device,
                 autocast: torch.autocast | None) -> dict[str, float]:
        """Eval metrics over `items`; "loss" is the one the progress line and `TrainResult.evals` keep."""
        raise NotImplementedError

    def finish(self, run: "Run") -> None:
        """Called once when the last step is done, before the final save (e.g. reward normalisation)."""

    def progress_fields(self, metrics: dict[str, float]) -> dict[str, str]:
        """Progress-line fields from the latest eval metrics."""
        return {"eval": f"{metrics['loss']:.4f}"}

    def save_model(self, model: nn.Module, directory: Path, *, tokenizer: Tokenizer, template: PromptTemplate,
                   extra: Callable[[Path], None]) -> None:
        from ..checkpoint import save_pretrained

        save_pretrained(self.lm(model), directory, tokenizer=tokenizer, template=template, extra=extra)

    # state beyond the optimizer (e.g. precomputed reference log-probs), saved for exact resume
    def state_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Take back what `state_tensors` saved (called on resume, before `prepare`)."""
