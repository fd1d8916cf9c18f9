"""What every training CLI shares (`minigpt-finetune`, `minigpt-reward`, `minigpt-dpo`, ...): the common flags,
the --out / --resume rules, and running a trainer with Ctrl-C -> exit 130 and a resume hint.

Defaults live in each trainer's config dataclass; argparse leaves the flags None so a resumed run can tell what
was passed explicitly, and --help shows each trainer's own defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from ..train import STATE_FILE, TrainConfig, TrainResult
from .common import UsageError

EXIT_INTERRUPTED = 130

# (flag, config field, type, help); the config class's default is appended to the help.
OPTIMIZATION: list[tuple[str, str, type, str]] = [
    ("--eval-fraction", "eval_fraction", float, "share of --data held out for evaluation"),
    ("--max-len", "max_len", int, "tokens per sequence; longer responses are cut (default: the model's context)"),
    ("--epochs", "epochs", float, "passes over the training records"),
    ("--max-steps", "max_steps", int, "optimizer steps; overrides --epochs"),
    ("--batch-size", "batch_size", int, "records per optimizer step, over all processes"),
    ("--micro-batch-size", "micro_batch_size", int, "records per forward pass per process; the rest of the "
     "batch is gradient accumulation (default: the whole per-process batch)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr-ratio", "min_lr_ratio", float, "the cosine schedule ends at lr x this"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps (default: 5%% of the steps)"),
    ("--weight-decay", "weight_decay", float, "AdamW decay on projection weights; never on biases, LayerNorm "
     "or embeddings"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm to this; 0 = off"),
    ("--eval-every", "eval_every", int, "evaluate every N steps (default: 10 times per run)"),
    ("--save-every", "save_every", int, "also checkpoint every N steps (default: at the end and on Ctrl-C)"),
    ("--seed", "seed", int, "seed of the data order, the eval split and any new weights"),
]
FIELD_EXAMPLES = {"prompt": "question", "response": "answer", "chosen": "preferred", "rejected": "dispreferred"}
COMMON_FIELDS = ("data", "eval_data", "skip_bad", "model", "random_init", "tokenizer", "template", "device",
                 "precision", "gradient_checkpointing", "report_to", "report_dir")


def with_default(text: str, config_class: type[TrainConfig], name: str) -> str:
    default = {f.name: f.default for f in dataclasses.fields(config_class)}.get(name)
    if default is None or "(default" in text:
        return text
    return f"{text} (default: {default})"


def add_training_arguments(parser: argparse.ArgumentParser, config_class: type[TrainConfig], *,
                           data_help: str, out_required: bool = True, data_flag: str = "--data",
                           eval_flag: str = "--eval-data", eval_help: str = "a separate evaluation JSONL file",
                           help_overrides: dict[str, str] | None = None, fields: tuple[str, ...] = ()) -> None:
    """The flags every trainer takes: data and checkpoints, the start model, optimization, running.
    `data_flag` / `eval_flag` name the data flags (PPO: --prompts; pretraining: --text, --eval-text; --data and
    --eval-data are accepted too); `help_overrides` replaces the help of optimization flags by config field name."""
    io = parser.add_argument_group("data and checkpoints")
    io.add_argument(*dict.fromkeys([data_flag, "--data"]), dest="data",
                    help=f"{data_help} (required unless --resume)")
    parser.set_defaults(data_flag=data_flag)
    io.add_argument(*dict.fromkeys([eval_flag, "--eval-data"]), dest="eval_data",
                    help=f"{eval_help} (default: hold out --eval-fraction)")
    io.add_argument("--out", required=out_required, help="checkpoint directory, replaced atomically at each save")
    io.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out, with its "
                    "saved settings (optimizer, schedule, data position and RNG included)")
    io.add_argument("--skip-bad", action="store_true", default=None, help="skip bad JSONL lines (reported with "
                    "their line numbers) instead of refusing the file")
    for name in fields:  # column mapping for data whose fields are named otherwise
        io.add_argument(f"--{name}-field", metavar="NAME", dest=f"{name}_field",
                        help=f"the data's name for the {name!r} field (e.g. --{name}-field "
                        f"{FIELD_EXAMPLES[name]})")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="hub id, directory or .safetensors file to start from (default: gpt2); "
                       "with --random-init a preset name or config.json")
    model.add_argument("--random-init", action="store_true", default=None,
                       help="start from random weights of --model's shape (training from scratch)")
    model.add_argument("--tokenizer", help="vocab directory (default: the model's own files, else "
                       "$MINIGPT_TOKENIZER_DIR)")
    model.add_argument("--template", help="prompt template JSON (default: the start checkpoint's "
                       "prompt_template.json, else minigpt's built-in template)")
    opt = parser.add_argument_group("optimization")
    for flag, name, kind, text in OPTIMIZATION:
        text = (help_overrides or {}).get(name, text)
        opt.add_argument(flag, dest=name, type=kind, help=with_default(text, config_class, name))
    run = parser.add_argument_group("running")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    run.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                     help="auto = bf16 autocast on CUDA, fp32 on CPU (default: auto)")
    run.add_argument("--gradient-checkpointing", action="store_true", default=None,
                     help="keep only each block's input and recompute its activations in backward: less memory "
                     "for long sequences and big models, about a third more compute; results unchanged")
    run.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    report = parser.add_argument_group("metrics out")
    report.add_argument("--report-to", action="append", choices=["tensorboard", "wandb", "trackio", "none"],
                        help="also send every step's numbers and evaluations here (repeatable; optional extras: "
                        "pip install \"minigpt[tensorboard]\" / \"minigpt[wandb]\" / \"minigpt[trackio]\"; "
                        "W&B honours WANDB_MODE, WANDB_PROJECT; trackio TRACKIO_DIR, TRACKIO_PROJECT)")
    report.add_argument("--report-dir", help="where their logs go (default: OUT-logs, beside the checkpoint)")


def explicit_settings(args: argparse.Namespace, extra_fields: tuple[str, ...] = ()) -> dict:
    """The config fields given on the command line (None = not given)."""
    names = [name for _, name, _, _ in OPTIMIZATION] + list(COMMON_FIELDS) + list(extra_fields)
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    columns = tuple((name, getattr(args, f"{name}_field")) for name in FIELD_EXAMPLES
                    if getattr(args, f"{name}_field", None) is not None)
    if columns:
        given["columns"] = columns
    return {name: tuple(value) if isinstance(value, list) else value for name, value in given.items()}


def check_out_dir(out: Path, resume: bool) -> None:
    """Never overwrite what is not ours, and never restart over a run that could be resumed."""
    if resume:
        if not (out / STATE_FILE).is_file():
            raise UsageError(f"--resume: {out} holds no training checkpoint ({STATE_FILE} not found)")
        return
    if out.is_dir() and (out / STATE_FILE).is_file():
        raise UsageError(f"{out} already holds a training checkpoint: pass --resume to continue it, or choose "
                         "another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not empty; choose a new directory")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_trainer(args: argparse.Namespace, train: Callable[..., TrainResult], config_class: type[TrainConfig],
                command: str, extra_fields: tuple[str, ...] = ()) -> int:
    """Train (or --resume) with the flags given; 130 after Ctrl-C with a hint how to continue."""
    out = Path(args.out).expanduser()
    check_out_dir(out, args.resume)
    settings = explicit_settings(args, extra_fields)
    logger = (lambda _: None) if args.quiet else log
    if args.resume:
        placeholder = config_class(data="", out=str(out))
        result = train(placeholder, resume=True, overrides=settings, progress=not args.quiet, log=logger)
    else:
        if not args.data:
            raise UsageError(f"{args.data_flag} is required (or --resume to continue a run)")
        result = train(config_class(out=str(out), **settings), progress=not args.quiet, log=logger)
    if result.interrupted:
        print(f"interrupted: resume with: {command} --out {out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
