"""Supervised fine-tuning (InstructGPT step 1): train GPT-2 on demonstrations, loss on the responses only.

One optimizer step sees `batch_size` examples (the global batch), split over processes (DDP under torchrun)
and micro-batches (gradient accumulation). The loss of a step is the sum of the response tokens' cross
entropy over the whole global batch divided by their number, however the batch is split, so one process and
several reach the same weights up to float rounding. The data order is a seeded permutation per epoch and
depends only on the step number, so a run resumed from a checkpoint continues exactly (bit-identical on CPU).

Checkpoints are the hub layout (model.safetensors + config.json + vocab files + prompt_template.json) plus
`trainer_state.json` and `training_state.safetensors` (optimizer moments, RNG): no pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import save_pretrained
from .config import GPTConfig
from .data import IGNORE_INDEX, DataReport, Example, PromptTemplate, collate, load_examples, split_eval
from .errors import CheckpointError, MiniGPTError
from .model import GPT
from .progress import Progress, format_duration
from .tokenizer import Tokenizer

STATE_FILE = "trainer_state.json"
TENSOR_STATE_FILE = "training_state.safetensors"
STATE_FORMAT = 1
# Settings that may differ when resuming: they do not change what is computed.
RESUME_MAY_CHANGE = frozenset({"device", "eval_every", "save_every"})


class TrainingError(MiniGPTError, ValueError):
    """Invalid training settings, or a checkpoint that cannot be resumed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a fine-tuning run computes (saved with its checkpoints)."""

    data: str  # JSONL of {"prompt","response"} or {"instruction","input","output"}
    out: str  # checkpoint directory (written atomically; --resume reads it)
    model: str = "gpt2"  # hub id, directory or .safetensors file; with random_init a preset name or config.json
    random_init: bool = False  # start from random weights of `model`'s shape instead of loading weights
    tokenizer: str | None = None  # vocab directory; default: the model's own files, else $MINIGPT_TOKENIZER_DIR
    template: str | None = None  # prompt template JSON; default: PromptTemplate()
    eval_data: str | None = None  # a separate eval JSONL; default: hold out eval_fraction of `data`
    eval_fraction: float = 0.1
    max_len: int | None = None  # tokens per example (prompt + response + EOS - 1); default: n_positions
    skip_bad: bool = False  # skip (and report) bad records instead of refusing the file
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8  # examples per optimizer step, over all processes
    micro_batch_size: int | None = None  # examples per forward pass per process; default: batch_size / world
    lr: float = 5e-5
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # default: 5% of the steps
    weight_decay: float = 0.01  # on the 2-D projection weights only
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_every: int | None = None  # steps; default: about 10 evaluations per run
    save_every: int | None = None  # steps; default: only at the end (and on Ctrl-C)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 elsewhere) | fp32 | bf16

    def check(self) -> None:
        positive = {"batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size or 1,
                    "max_steps": 1 if self.max_steps is None else self.max_steps,
                    "eval_every": self.eval_every or 1, "save_every": self.save_every or 1}
        for name, value in positive.items():
            if value < 1:
                raise TrainingError(f"{name} must be >= 1, got {value}")
        if not self.epochs > 0:
            raise TrainingError(f"epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise TrainingError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainingError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainingError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise TrainingError("weight_decay and grad_clip must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TrainingError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.max_len is not None and self.max_len < 2:
            raise TrainingError(f"max_len must be >= 2, got {self.max_len}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        data["betas"] = tuple(data["betas"])
        return cls(**data)


@dataclass
class TrainResult:
    """What a call to `train` did."""

    out: Path
    step: int
    total_steps: int
    train_losses: list[float] = field(default_factory=list)  # mean response-token loss of each step run here
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss), whole run
    interrupted: bool = False
    report: DataReport | None = None


# --------------------------------------------------------------------------- loss, optimizer, schedule


class ResponseLoss(nn.Module):
    """Sum of the cross entropy over target positions (not mean: the caller divides by the global count).

    The LM head runs only where a target counts: prompt and padding positions cost no [V]-wide logits.
    A module (not a function) so DistributedDataParallel can wrap it.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        hidden = self.model.features(input_ids)  # [B, T, C]
        keep = targets != IGNORE_INDEX  # [B, T]
        logits = self.model.lm_head(hidden[keep])  # [N, V]
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def param_groups(model: GPT, weight_decay: float) -> tuple[list[dict], list[str]]:
    """AdamW groups: decay on the 2-D projection weights; none on biases, LayerNorms or embeddings.

    Also returns the parameter names in optimizer order (for saving its state by name).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        is_embedding = name.startswith(("wte.", "wpe."))
        (decay if param.ndim == 2 and not is_embedding else no_decay).append((name, param))
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    return groups, [n for n, _ in decay] + [n for n, _ in no_decay]


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine from lr down to lr * min_ratio at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EpochSampler:
    """Example indices of a global batch: a seeded permutation per epoch, walked in order, by step number."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    def global_batch(self, step: int, size: int) -> list[int]:
        return [self.permutation(p // self.n)[p % self.n] for p in range(step * size, (step + 1) * size)]


def micro_batches(indices: list[int], rank: int, world: int, micro: int) -> list[list[int]]:
    """This process's share of a global batch, cut into micro-batches."""
    share = len(indices) // world
    mine = indices[rank * share: (rank + 1) * share]
    return [mine[i: i + micro] for i in range(0, len(mine), micro)]


@torch.no_grad()
def evaluate(model: GPT, examples: list[Example], *, batch_size: int, device: torch.device,
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


# --------------------------------------------------------------------------- stopping on Ctrl-C


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save a resumable checkpoint, stop.

    Alone, a second Ctrl-C aborts at once (KeyboardInterrupt) without saving. Under torchrun a second signal is
    ignored: torchrun forwards the terminal's Ctrl-C to each worker, and a worker that shares the terminal's
    process group (older torch versions) would count it twice; torchrun's kill timeout is the hard stop there.
    """

    def __init__(self, notify: Callable[[str], None], *, abort_on_second: bool = True) -> None:
        self.requested = False
        self.notify = notify
        self.abort_on_second = abort_on_second
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if self.abort_on_second and signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        again = "Ctrl-C again aborts without saving" if self.abort_on_second else "please wait"
        self.notify(f"stopping after this step and saving a resumable checkpoint ({again})")

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun set up (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_(values: Tensor, dist_info: Distributed, op: str = "sum") -> Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return values


# --------------------------------------------------------------------------- checkpoint state


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def training_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> tuple[dict[str, Tensor], dict]:
    """Optimizer moments by parameter name + RNG states as tensors; the param groups as JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            tensors[f"optimizer.{names[index]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups}


def restore_training_tensors(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, Tensor],
                             meta: dict, where: Path) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for index, name in enumerate(names):
        prefix = f"optimizer.{name}."
        per_param = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if per_param:
            state[index] = per_param
    if len(state) != len(names) and state:
        missing = [n for i, n in enumerate(names) if i not in state]
        raise CheckpointError(f"{where}: optimizer state missing for {', '.join(missing[:5])}")
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    _match_param_layouts(optimizer)
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def _match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give restored moments their parameter's memory layout (wte is a transposed view), exactly as a fresh
    AdamW makes them, so a resumed run runs the very same kernels as an uninterrupted one."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param).copy_(value)


def read_trainer_state(directory: Path) -> dict:
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"cannot resume: {directory} holds no {STATE_FILE} (not a training checkpoint)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrainingError(f"cannot resume: {path} is unreadable ({exc})") from None
    if state.get("format") != STATE_FORMAT:
        raise TrainingError(f"cannot resume: {path} has format {state.get('format')!r}, expected {STATE_FORMAT}")
    return state


def resumed_config(saved: dict, overrides: dict | None) -> TrainConfig:
    """The interrupted run's settings; `overrides` (what the user passed) must agree except RESUME_MAY_CHANGE."""
    config = TrainConfig.from_json(saved)
    changed = {k: v for k, v in (overrides or {}).items() if k not in RESUME_MAY_CHANGE}
    conflicts = [f"{k}={v!r} (run has {getattr(config, k)!r})" for k, v in changed.items()
                 if _normalise(v) != _normalise(getattr(config, k))]
    if conflicts:
        raise TrainingError(f"cannot resume with different settings: {', '.join(conflicts)}; "
                            "pass only --out and --resume (and optionally --device)")
    allowed = {k: v for k, v in (overrides or {}).items() if k in RESUME_MAY_CHANGE}
    return dataclasses.replace(config, **allowed)


def _normalise(value):
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- the run


def pick_device(name: str, dist_info: Distributed | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("device cuda asked for, but CUDA is not available on this machine (use cpu)")
        if name == "cuda" and dist_info is not None and dist_info.world > 1:
            return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


def start_model_config(model: str, *, random_init: bool) -> GPTConfig:
    """The shape of the model training starts from (a checkpoint's config, or a preset / config.json)."""
    if random_init:
        path = Path(model)
        return GPTConfig.from_json(path) if path.suffix == ".json" else GPTConfig.from_preset(model)
    from .loading import resolve_checkpoint

    return resolve_checkpoint(model).config


def load_start_model(config: TrainConfig, model_config: GPTConfig) -> GPT:
    """The weights training starts from: loaded (never silently random) unless random_init asks for it."""
    if not config.random_init:
        from .loading import load_pretrained

        return load_pretrained(config.model)
    torch.manual_seed(config.seed)
    return GPT(model_config)


def resume(out: str | Path, *, overrides: dict | None = None, **kwargs) -> TrainResult:
    """Continue the run checkpointed in `out` with its saved settings (arguments as `train`)."""
    return train(TrainConfig(data="", out=str(out)), resume=True, overrides=overrides, **kwargs)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Fine-tune (or, with `resume`, continue the run saved in `config.out`, ignoring the rest of `config`).

    overrides: on resume, the settings the caller passed explicitly; they must match the saved run.
    should_stop(step): checked after each step; True stops the run and saves it as Ctrl-C does.
    """
    out = Path(config.out).expanduser()
    saved_state = None
    if resume:
        saved_state = read_trainer_state(out)
        config = resumed_config(saved_state["config"], overrides)
    config.check()
    run = _Run(config, out, saved_state, progress=progress, log=log, should_stop=should_stop)
    try:
        return run.loop()
    finally:
        run.close()


class _Run:
    """One training run: the setup, the step loop, evaluation and checkpoints."""

    def __init__(self, config: TrainConfig, out: Path, saved: dict | None, *, progress: bool,
                 log: Callable[[str], None] | None, should_stop: Callable[[int], bool] | None) -> None:
        self.config = config
        self.out = out
        self.should_stop = should_stop
        self.device_type = "cuda" if config.device.startswith("cuda") or (
            config.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist = init_distributed(self.device_type)
        self.device = pick_device(config.device, self.dist)
        self.show = progress and self.dist.main
        self._log = log or (lambda text: None)
        self.ddp_model: nn.Module | None = None

        self.data_sha = file_sha256(config.data) if Path(config.data).is_file() else None
        if saved is not None and saved.get("data_sha256") != self.data_sha:
            raise TrainingError(f"cannot resume: {config.data} changed since the run started "
                                "(its sha256 differs); restore it or start a new run in a new --out")
        self._check_batch_split()
        self._setup_data_and_model(saved)
        self._setup_schedule()
        self._setup_optimizer(saved)

    def log(self, text: str) -> None:
        if self.dist.main:
            self._log(text)

    # ----- setup

    def _setup_data_and_model(self, saved: dict | None) -> None:
        """Tokenizer, template and data first (bad data fails before a big model loads), then the weights."""
        config = self.config
        source = str(self.out) if saved is not None else config.model
        if saved is not None:
            self.tokenizer = Tokenizer.from_pretrained(self.out)
            self.template = PromptTemplate.load(self.out)
        else:
            self.tokenizer = Tokenizer.for_model(None if config.random_init else config.model, config.tokenizer)
            self.template = PromptTemplate.load(config.template) if config.template else PromptTemplate()
        model_config = start_model_config(source, random_init=config.random_init and saved is None)
        if self.tokenizer.vocab_size > model_config.vocab_size:
            raise TrainingError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                                f"{model_config.vocab_size}")
        max_len = config.max_len or model_config.n_positions
        if max_len > model_config.n_positions:
            raise TrainingError(f"max_len {max_len} exceeds the model's {model_config.n_positions} positions")
        examples, self.report = load_examples(config.data, self.tokenizer, self.template, max_len,
                                              skip_bad=config.skip_bad)
        if saved is not None:
            from .loading import load_pretrained

            self.model = load_pretrained(self.out)
        else:
            self.model = load_start_model(config, model_config)
        self.model.to(self.device).train()
        for problem in self.report.skipped[:20]:
            self.log(f"skipped {problem}")
        if len(self.report.skipped) > 20:
            self.log(f"skipped {len(self.report.skipped) - 20} more bad lines")
        if config.eval_data:
            self.train_set = examples
            self.eval_set, eval_report = load_examples(config.eval_data, self.tokenizer, self.template, max_len,
                                                       skip_bad=config.skip_bad)
        else:
            self.train_set, self.eval_set = split_eval(examples, config.eval_fraction, config.seed)
        self.log(f"data: {self.report.summary()}; {len(self.train_set)} train / {len(self.eval_set)} eval")
        if self.report.truncated:
            self.log(f"truncated lines: {', '.join(map(str, self.report.truncated[:20]))}")
        if self.report.dropped:
            self.log(f"dropped lines: {', '.join(map(str, self.report.dropped[:20]))}")

    def _check_batch_split(self) -> None:
        """batch_size = processes x accumulation x micro_batch_size, exactly."""
        config, world = self.config, self.dist.world
        if config.batch_size % world:
            raise TrainingError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
        per_process = config.batch_size // world
        self.micro = config.micro_batch_size or per_process
        if per_process % self.micro:
            raise TrainingError(f"batch_size / processes = {per_process} is not a multiple of micro_batch_size "
                                f"{self.micro}")
        self.accumulation = per_process // self.micro

    def _setup_schedule(self) -> None:
        config = self.config
        n = len(self.train_set)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * n / config.batch_size))
        self.warmup = config.warmup_steps if config.warmup_steps is not None else int(0.05 * self.total_steps)
        self.eval_every = config.eval_every or max(1, self.total_steps // 10)
        self.sampler = EpochSampler(n, config.seed)
        self.autocast = None
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if use_bf16:
            self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _setup_optimizer(self, saved: dict | None) -> None:
        config = self.config
        groups, self.param_names = param_groups(self.model, config.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
        self.step = 0
        self.evals: list[tuple[int, float]] = []
        if saved is not None:
            from safetensors import safe_open

            path = self.out / TENSOR_STATE_FILE
            try:
                with safe_open(str(path), framework="pt") as handle:
                    tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            except Exception as exc:
                raise CheckpointError(f"cannot resume: {path} is missing or unreadable ({exc})") from None
            restore_training_tensors(self.optimizer, self.param_names, tensors, saved["optimizer"], path)
            self.step = saved["step"]
            self.evals = [tuple(e) for e in saved.get("evals", [])]
            if saved["total_steps"] != self.total_steps:
                raise TrainingError(f"cannot resume: the run had {saved['total_steps']} steps, these settings give "
                                    f"{self.total_steps}")
        self.loss_module: nn.Module = ResponseLoss(self.model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=ids)

    # ----- the loop

    def loop(self) -> TrainResult:
        config = self.config
        result = TrainResult(self.out, self.step, self.total_steps, evals=self.evals, report=self.report)
        if self.step == 0 and self.eval_set:
            self._evaluate(result)
            self.log(f"eval loss before training: {result.evals[-1][1]:.4f} (ppl {math.exp(result.evals[-1][1]):.2f})")
        bar = Progress(self.total_steps, label="train", enabled=self.show, start=self.step)
        self.log(f"training {self.total_steps - self.step} steps from step {self.step}: {config.batch_size} examples "
                 f"per step = {self.dist.world} process(es) x {self.accumulation} micro-batch(es) x {self.micro}; "
                 f"device {self.device}{', bf16 autocast' if self.autocast else ''}")
        started, tokens = time.perf_counter(), 0
        with StopRequest(bar.message if self.show else self.log, abort_on_second=self.dist.world == 1) as stop:
            while self.step < self.total_steps:
                loss, step_tokens = self._train_step()
                tokens += step_tokens
                result.train_losses.append(loss)
                self.step += 1
                result.step = self.step
                if self.eval_set and (self.step % self.eval_every == 0 or self.step == self.total_steps):
                    self._evaluate(result)
                elapsed = time.perf_counter() - started
                fields = {"loss": f"{loss:.4f}", "lr": f"{self._lr(self.step - 1):.2e}",
                          "tok/s": f"{tokens * self.dist.world / elapsed:,.0f}"}
                if result.evals:
                    fields["eval"] = f"{result.evals[-1][1]:.4f} (step {result.evals[-1][0]})"
                bar.update(self.step, **fields)
                wants_stop = stop.requested or (self.should_stop is not None and self.should_stop(self.step))
                if self._agree(wants_stop) and self.step < self.total_steps:
                    result.interrupted = True
                    break
                if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                    self.save(result)
            bar.close()
            self.save(result)
        took = format_duration(time.perf_counter() - started)
        if result.interrupted:
            self.log(f"stopped at step {self.step}/{self.total_steps} after {took}; checkpoint in {self.out} "
                     "(continue with --resume)")
        else:
            self.log(f"done: {self.total_steps} steps in {took}; checkpoint in {self.out}")
        return result

    def _lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, lr=c.lr, warmup=self.warmup, total=self.total_steps, min_ratio=c.min_lr_ratio)

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over the global batch; returns its mean response-token loss and input tokens."""
        lr = self._lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices = self.sampler.global_batch(self.step, self.config.batch_size)
        global_targets = sum(len(self.train_set[i].ids) - self.train_set[i].prompt_len for i in indices)
        scale = self.dist.world / global_targets  # DDP averages gradients over processes
        chunks = micro_batches(indices, self.dist.rank, self.dist.world, self.micro)
        loss_sum, tokens = 0.0, 0
        for i, chunk in enumerate(chunks):
            batch = collate([self.train_set[j] for j in chunk], self.model.config.eos_token_id).to(self.device)
            sync = i == len(chunks) - 1
            with self._no_sync(sync), self.autocast or nullcontext():
                part = self.loss_module(batch.input_ids, batch.targets)
            (part * scale).backward()
            loss_sum += float(part.detach())
            tokens += sum(len(self.train_set[j].ids) - 1 for j in chunk)
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        total = all_reduce_(torch.tensor([loss_sum], dtype=torch.float64), self.dist)
        return float(total[0]) / global_targets, tokens

    def _no_sync(self, sync: bool):
        if self.dist.world > 1 and not sync:
            return self.loss_module.no_sync()
        return nullcontext()

    def _agree(self, wants_stop: bool) -> bool:
        """Every process stops at the same step if any of them was asked to."""
        flag = all_reduce_(torch.tensor([float(wants_stop)]), self.dist, op="max")
        return bool(flag[0] > 0)

    def _evaluate(self, result: TrainResult) -> None:
        loss = evaluate(self.model, self.eval_set, batch_size=self.micro, device=self.device, autocast=self.autocast)
        result.evals.append((self.step, loss))
        self.evals = result.evals

    # ----- checkpoints

    def save(self, result: TrainResult) -> None:
        """Write the model, vocab, template and the training state to `out` (rank 0; atomic)."""
        if self.dist.main:
            tensors, optimizer_meta = training_tensors(self.optimizer, self.param_names)
            state = {
                "format": STATE_FORMAT, "step": self.step, "total_steps": self.total_steps,
                "finished": self.step >= self.total_steps, "config": self.config.to_json(),
                "data_sha256": self.data_sha, "evals": result.evals, "optimizer": optimizer_meta,
                "data_report": {"records": self.report.records, "skipped": self.report.skipped,
                                "truncated": self.report.truncated, "dropped": self.report.dropped},
            }

            def extra(directory: Path) -> None:
                from safetensors.torch import save_file

                save_file(tensors, str(directory / TENSOR_STATE_FILE))
                (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

            save_pretrained(self.model, self.out, tokenizer=self.tokenizer, template=self.template, extra=extra)
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.dist.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
