"""The training loop every objective shares: setup, the step loop, evaluation, checkpoints and exact resume.

An objective (`Objective`: SFT, reward model, DPO, ...) says what its data is, which module it trains, how a
micro-batch turns into a summed loss, how it evaluates and what it saves. Everything else lives here once:

- one optimizer step sees `batch_size` records (the global batch), split over processes (DDP under torchrun)
  and micro-batches (gradient accumulation). The loss of a step is the sum of the per-unit losses of the whole
  global batch divided by the number of units (`Objective.weight`: response tokens for SFT, records for
  preference objectives), however the batch is split, so one process and several reach the same weights;
- AdamW (decay only on 2-D projection weights), linear warmup then cosine decay, gradient clipping, bf16
  autocast on CUDA;
- the data order is a seeded permutation per epoch that depends only on the step number, so a run resumed
  from a checkpoint continues exactly (bit-identical on CPU);
- Ctrl-C / SIGTERM finish the step and save; checkpoints are written atomically (see minigpt.checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..kernels import training_kernel, use_kernel_
from ..model import Transformer
from ..progress import Progress, format_duration
from ..tokenizer import Tokenizer
from .config import TrainConfig, TrainingError
from .data import DataReport, PromptTemplate
from .env import (Distributed, StopRequest, all_reduce_, barrier, close_distributed, init_distributed,
                  KEEP_FREED_BYTES, keep_freed_memory, pick_device)
from .objective import Objective, StepResult, start_model_config
from .optim import EpochSampler, fused_adamw, lr_at, micro_batches, param_groups
from .report import Reporters, default_report_dir
from .state import (
    STATE_FILE,
    STATE_FORMAT,
    TENSOR_STATE_FILE,
    read_step_log,
    read_tensor_state,
    read_trainer_state,
    restore_training_tensors,
    resumed_config,
    training_tensors,
)

OBJECTIVE_PREFIX = "objective."  # an objective's own tensors in training_state.safetensors
LOG_FILE = "train_log.jsonl"  # one JSON line per step (loss, lr, the objective's step statistics), in each checkpoint


@dataclass
class TrainResult:
    """What a call to `train` did."""

    out: Path
    step: int
    total_steps: int
    train_losses: list[float] = field(default_factory=list)  # mean loss of each step run here
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, eval loss), whole run
    eval_metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, all eval metrics)
    interrupted: bool = False
    report: DataReport | None = None


def batch_fields(batch: Any) -> dict[str, Any]:
    """A batch dataclass's fields by name, as the loss module's keyword arguments (no copies)."""
    return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}


# --------------------------------------------------------------------------- entry points


def run_training(
    objective_class: type[Objective],
    config: TrainConfig,
    *,
    resume: bool = False,
    overrides: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train `objective_class` (or, with `resume`, continue the run saved in `config.out`, ignoring the rest).

    overrides: on resume, the settings the caller passed explicitly; they must match the saved run.
    should_stop(step): checked after each step; True stops the run and saves it as Ctrl-C does.
    """
    out = Path(config.out).expanduser()
    saved_state = None
    if resume:
        saved_state = read_trainer_state(out)
        saved_objective = saved_state.get("objective", "sft")
        if saved_objective != objective_class.name:
            raise TrainingError(f"cannot resume: {out} holds a {saved_objective} run, not a "
                                f"{objective_class.name} run")
        config = resumed_config(objective_class.config_class, saved_state["config"], overrides)
    config.check()
    run = Run(objective_class(config), out, saved_state, progress=progress, log=log, should_stop=should_stop)
    try:
        return run.loop()
    finally:
        run.close()


class Run:
    """One training run: setup, the step loop, evaluation and checkpoints, for any objective."""

    def __init__(self, objective: Objective, out: Path, saved: dict | None, *, progress: bool,
                 log: Callable[[str], None] | None, should_stop: Callable[[int], bool] | None) -> None:
        self.objective = objective
        self.config = config = objective.config
        self.out = out
        self.should_stop = should_stop
        self.device_type = "cuda" if config.device.startswith("cuda") or (
            config.device == "auto" and torch.cuda.is_available()) else "cpu"
        self.dist: Distributed = init_distributed(self.device_type)
        self.device = pick_device(config.device, self.dist)
        # CPU steps free and reallocate blocks of hundreds of MB: keep them mapped rather than fault them in anew
        self.keeps_freed_memory = self.device.type == "cpu" and keep_freed_memory()
        self.show = progress and self.dist.main
        objective.show_progress = self.show
        self.resumed = saved is not None
        self.finish_pending = False  # the last step is done but the objective's `finish` has not succeeded
        self.grad_norm: float | None = None  # the last optimizer step's gradient norm (when clipping)
        self.reporters = Reporters((), Path("."), config={}, out=out, start_step=0)  # metrics out: `loop` sets them
        self._log = log or (lambda text: None)

        self.data_sha = objective.data_digest(config.data)
        if saved is not None and saved.get("data_sha256") != self.data_sha:
            raise TrainingError(f"cannot resume: {config.data} changed since the run started "
                                "(its sha256 differs); restore it or start a new run in a new --out")
        self._check_batch_split()
        self._setup_data_and_model(saved)
        self._setup_schedule()
        self._setup_optimizer(saved)
        objective.prepare(self)
        for part in vars(objective).values():  # its frozen models (a reference, a reward model) multiply alike
            if isinstance(part, torch.nn.Module):
                use_kernel_(part, self.matmul_kernel)
        self.loss_module = objective.loss_module(self.model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.loss_module = DistributedDataParallel(self.loss_module, device_ids=ids)

    def log(self, text: str) -> None:
        if self.dist.main:
            self._log(text)

    # ----- setup

    def _setup_data_and_model(self, saved: dict | None) -> None:
        """Tokenizer, template and data first (bad data fails before a big model loads), then the weights."""
        config, objective = self.config, self.objective
        resumed = saved is not None
        if resumed:
            self.tokenizer = Tokenizer.from_pretrained(self.out)
            self.template = PromptTemplate.load(self.out)
        else:
            self.tokenizer = Tokenizer.for_model(None if config.random_init else config.model, config.tokenizer)
            self.template = PromptTemplate.for_model(None if config.random_init else config.model, config.template)
        source = str(self.out) if resumed else config.model
        model_config = start_model_config(source, random_init=config.random_init and not resumed)
        if self.tokenizer.vocab_size > model_config.vocab_size:
            raise TrainingError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                                f"{model_config.vocab_size}")
        self.max_len = config.max_len or model_config.n_positions
        if self.max_len > model_config.n_positions:
            raise TrainingError(f"max_len {self.max_len} exceeds the model's {model_config.n_positions} positions")
        items, self.report = objective.load_data(config.data, self.tokenizer, self.template, self.max_len)
        if config.eval_data:
            self.train_set = items
            self.eval_set, _ = objective.load_data(config.eval_data, self.tokenizer, self.template, self.max_len)
        else:
            self.train_set, self.eval_set = objective.split_eval(items, config.eval_fraction, config.seed)
        self.model = objective.load_model(source, resumed=resumed, model_config=model_config)
        self.model.to(self.device).train()
        for module in self.model.modules():  # the policy, a value or reward model: each Transformer inside
            if isinstance(module, Transformer):
                module.gradient_checkpointing = config.gradient_checkpointing
        # The products' kernel: measured once per machine (stored), or the one the resumed run multiplied with
        # (runs saved before it was recorded used the split product), so a resumed run rounds as the first did.
        self.matmul_kernel = saved.get("matmul_kernel", "in_out_split") if resumed else \
            training_kernel(model_config.n_embd, next(self.model.parameters()).dtype, self.device)
        use_kernel_(self.model, self.matmul_kernel)
        for problem in self.report.skipped[:20]:
            self.log(f"skipped {problem}")
        if len(self.report.skipped) > 20:
            self.log(f"skipped {len(self.report.skipped) - 20} more bad lines")
        self.log(f"data: {self.report.summary()}; {len(self.train_set)} train / {len(self.eval_set)} eval")
        self.log(f"matrix products: {self.matmul_kernel}" + (" (this run's)" if resumed else " (measured once on "
                 "this machine, then stored: minigpt.kernels.training_kernel)"))
        if self.keeps_freed_memory:
            self.log(f"memory: freed blocks up to {KEEP_FREED_BYTES >> 20} MB are kept for reuse, not returned to the "
                     "system (glibc mallopt: minigpt.train.env.keep_freed_memory)")
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
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                                           fused=fused_adamw(self.device))
        self.step = 0
        self.finished_before = bool(saved and saved.get("finished"))
        self.evals: list[tuple[int, float]] = []
        self.eval_metrics: list[tuple[int, dict[str, float]]] = []
        self.history: list[dict] = []  # one entry per step: LOG_FILE
        if saved is None:
            return
        tensors = read_tensor_state(self.out)
        restore_training_tensors(self.optimizer, self.param_names, tensors, saved["optimizer"],
                                 self.out / TENSOR_STATE_FILE)
        self.objective.load_state_tensors({k[len(OBJECTIVE_PREFIX):]: v for k, v in tensors.items()
                                           if k.startswith(OBJECTIVE_PREFIX)})
        self.step = saved["step"]
        self.history = read_step_log(self.out / LOG_FILE, self.step)
        self.evals = [tuple(e) for e in saved.get("evals", [])]
        self.eval_metrics = [(s, m) for s, m in saved.get("eval_metrics", [])]
        if saved["total_steps"] != self.total_steps:
            raise TrainingError(f"cannot resume: the run had {saved['total_steps']} steps, these settings give "
                                f"{self.total_steps}")

    # ----- the loop

    def loop(self) -> TrainResult:
        """Train to the end (or a stop request), reporting to the chosen metric backends (rank 0)."""
        backends = self.config.report_to if self.dist.main else ()
        self.reporters = Reporters(backends, Path(self.config.report_dir or default_report_dir(self.out)),
                                   config=self.config.to_json(), out=self.out, start_step=self.step)
        try:
            return self._loop()
        finally:
            self.reporters.close()

    def _loop(self) -> TrainResult:
        config = self.config
        result = TrainResult(self.out, self.step, self.total_steps, evals=self.evals, eval_metrics=self.eval_metrics,
                             report=self.report)
        if self.step == 0 and self.eval_set:
            self._evaluate(result)
            summary = ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics[-1][1].items())
            self.log(f"eval before training: {summary}")
        bar = Progress(self.total_steps, label="train", enabled=self.show, start=self.step)
        self.log(f"training {self.total_steps - self.step} steps from step {self.step}: {config.batch_size} records "
                 f"per step = {self.dist.world} process(es) x {self.accumulation} micro-batch(es) x {self.micro}; "
                 f"device {self.device}{', bf16 autocast' if self.autocast else ''}")
        started, tokens = time.perf_counter(), 0
        with StopRequest(bar.message if self.show else self.log, abort_on_second=self.dist.world == 1) as stop:
            while self.step < self.total_steps:
                lr = self._lr(self.step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                done = self.objective.train_step(self)
                tokens += done.tokens
                result.train_losses.append(done.loss)
                self.step += 1
                result.step = self.step
                self.history.append({"step": self.step, "loss": done.loss, "lr": lr, **done.stats})
                elapsed = time.perf_counter() - started
                extra = {"tokens_per_second": tokens * self.dist.world / elapsed}
                if self.grad_norm is not None:
                    extra["grad_norm"] = self.grad_norm
                self.reporters.step(self.step, {**self.history[-1], **extra})
                if self.eval_set and (self.step % self.eval_every == 0 or self.step == self.total_steps):
                    self._evaluate(result)
                fields = {"loss": f"{done.loss:.4f}", "lr": f"{lr:.2e}",
                          **self.objective.step_fields(done.stats),
                          "tok/s": f"{tokens * self.dist.world / elapsed:,.0f}"}
                if result.eval_metrics:
                    at, metrics = result.eval_metrics[-1]
                    fields.update({k: f"{v} (step {at})" if k == "eval" else v
                                   for k, v in self.objective.progress_fields(metrics).items()})
                bar.update(self.step, **fields)
                wants_stop = stop.requested or (self.should_stop is not None and self.should_stop(self.step))
                if self._agree(wants_stop) and self.step < self.total_steps:
                    result.interrupted = True
                    break
                if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                    self.save(result)
            bar.close()
            if not result.interrupted and not self.finished_before:
                self.finish_pending = True  # saved as unfinished until `finish` succeeds: --resume retries it
                try:
                    self.objective.finish(self)
                except BaseException:
                    self.save(result)  # the trained steps are never lost
                    self.log(f"the final stage failed; the trained model is saved in {self.out}: fix the cause "
                             "and run again with --resume to finish it")
                    raise
                self.finish_pending = False
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

    def supervised_step(self) -> StepResult:
        """One optimizer step over the step's global batch of records; its mean loss and the tokens read here."""
        objective = self.objective
        indices = objective.batch_indices(self, self.step)
        global_weight = sum(objective.weight(objective.item(self.train_set, i)) for i in indices)
        scale = self.dist.world / global_weight  # DDP averages gradients over processes
        chunks = micro_batches(indices, self.dist.rank, self.dist.world, self.micro)
        loss_sum, tokens = 0.0, 0
        for i, chunk in enumerate(chunks):
            items = [objective.item(self.train_set, j) for j in chunk]
            batch = objective.collate(items, self.pad_id).to(self.device)
            with self.no_sync(i < len(chunks) - 1), self.autocast or nullcontext():
                part = self.loss_module(**batch_fields(batch))
            (part * scale).backward()
            loss_sum += float(part.detach())
            tokens += sum(objective.tokens(item) for item in items)
        self.optimizer_step()
        total = all_reduce_(torch.tensor([loss_sum], dtype=torch.float64), self.dist)
        return StepResult(float(total[0]) / global_weight, tokens)

    def optimizer_step(self) -> None:
        """Clip the gradient norm (if set), step AdamW, clear the gradients."""
        if self.config.grad_clip:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def pad_id(self) -> int:
        return self.objective.lm(self.model).config.eos_token_id

    def no_sync(self, skip_sync: bool):
        """DDP: with skip_sync, this backward only accumulates (the gradients are averaged at the last one)."""
        if self.dist.world > 1 and skip_sync:
            return self.loss_module.no_sync()
        return nullcontext()

    def _agree(self, wants_stop: bool) -> bool:
        """Every process stops at the same step if any of them was asked to."""
        flag = all_reduce_(torch.tensor([float(wants_stop)]), self.dist, op="max")
        return bool(flag[0] > 0)

    def _evaluate(self, result: TrainResult) -> None:
        was_training = self.model.training
        self.model.eval()
        metrics = self.objective.evaluate(self.model, self.eval_set, batch_size=self.micro, device=self.device,
                                          autocast=self.autocast)
        self.model.train(was_training)
        self.reporters.eval(self.step, metrics)
        result.evals.append((self.step, metrics[self.objective.main_metric]))
        result.eval_metrics.append((self.step, metrics))
        self.evals, self.eval_metrics = result.evals, result.eval_metrics

    # ----- checkpoints

    def save(self, result: TrainResult) -> None:
        """Write the model, vocab, template and the training state to `out` (rank 0; atomic)."""
        if self.dist.main:
            tensors, optimizer_meta = training_tensors(self.optimizer, self.param_names)
            tensors.update({OBJECTIVE_PREFIX + k: v.detach().cpu().contiguous()
                            for k, v in self.objective.state_tensors().items()})
            state = {
                "format": STATE_FORMAT, "objective": self.objective.name, "step": self.step,
                "total_steps": self.total_steps,
                "finished": self.step >= self.total_steps and not self.finish_pending,
                "config": self.config.to_json(), "data_sha256": self.data_sha, "evals": result.evals,
                "eval_metrics": result.eval_metrics, "optimizer": optimizer_meta, "matmul_kernel": self.matmul_kernel,
                "data_report": {"records": self.report.records, "skipped": self.report.skipped,
                                "truncated": self.report.truncated, "dropped": self.report.dropped},
            }

            def extra(directory: Path) -> None:
                from safetensors.torch import save_file

                save_file(tensors, str(directory / TENSOR_STATE_FILE))
                (directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
                (directory / LOG_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in self.history),
                                                  encoding="utf-8")

            self.objective.save_model(self.model, self.out, tokenizer=self.tokenizer, template=self.template,
                                      extra=extra)
        barrier(self.dist)

    def close(self) -> None:
        close_distributed(self.dist)
