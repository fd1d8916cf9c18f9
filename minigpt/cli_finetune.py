"""`minigpt-finetune` / `scripts/finetune.py`: supervised fine-tuning on an instruction JSONL file.

Errors are one line on stderr and a non-zero exit. Ctrl-C finishes the current step, writes a resumable
checkpoint and exits 130; `--resume` continues it exactly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import OneLineParser, UsageError, run_cli
from .train import STATE_FILE, TrainConfig, resume, train

EXIT_INTERRUPTED = 130

# (flag, TrainConfig field, type, help). Defaults live in TrainConfig; argparse leaves them None so that a
# resumed run can tell what was passed explicitly.
OPTIONS: list[tuple[str, str, type, str]] = [
    ("--eval-fraction", "eval_fraction", float, "share of --data held out for evaluation (default: 0.1)"),
    ("--max-len", "max_len", int, "tokens per example; longer responses are cut (default: the model's context)"),
    ("--epochs", "epochs", float, "passes over the training examples (default: 3)"),
    ("--max-steps", "max_steps", int, "optimizer steps; overrides --epochs"),
    ("--batch-size", "batch_size", int, "examples per optimizer step, over all processes (default: 8)"),
    ("--micro-batch-size", "micro_batch_size", int, "examples per forward pass per process; the rest of the "
     "batch is gradient accumulation (default: the whole per-process batch)"),
    ("--lr", "lr", float, "peak learning rate (default: 5e-5)"),
    ("--min-lr-ratio", "min_lr_ratio", float, "the cosine schedule ends at lr x this (default: 0.1)"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps (default: 5%% of the steps)"),
    ("--weight-decay", "weight_decay", float, "AdamW decay on projection weights; never on biases, LayerNorm "
     "or embeddings (default: 0.01)"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm to this; 0 = off (default: 1.0)"),
    ("--eval-every", "eval_every", int, "evaluate every N steps (default: 10 times per run)"),
    ("--save-every", "save_every", int, "also checkpoint every N steps (default: at the end and on Ctrl-C)"),
    ("--seed", "seed", int, "seed of the data order and of --random-init (default: 0)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-finetune",
        description="Supervised fine-tuning (InstructGPT step 1): train GPT-2 on instruction/response pairs, with "
        "the loss on the responses only. Writes a checkpoint (hub layout: model.safetensors, config.json, vocab, "
        "prompt_template.json, plus the training state) that minigpt and transformers both load.",
        epilog="data: JSONL, one record per line: {\"prompt\": ..., \"response\": ...} or Alpaca's "
        "{\"instruction\": ..., \"input\": ..., \"output\": ...}.\n"
        "examples:\n"
        "  minigpt-finetune --data examples/instructions.jsonl --out runs/sft --model gpt2 --epochs 3\n"
        "  minigpt-finetune --out runs/sft --resume            # after Ctrl-C: continue exactly\n"
        "  torchrun --nproc_per_node 2 scripts/finetune.py --data d.jsonl --out runs/sft   # data parallel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("data and checkpoints")
    io.add_argument("--data", help="training JSONL file (required unless --resume)")
    io.add_argument("--eval-data", help="a separate evaluation JSONL file (default: hold out --eval-fraction)")
    io.add_argument("--out", required=True, help="checkpoint directory, replaced atomically at each save")
    io.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out, with its "
                    "saved settings (optimizer, schedule, data position and RNG included)")
    io.add_argument("--skip-bad", action="store_true", default=None, help="skip bad JSONL lines (reported with "
                    "their line numbers) instead of refusing the file")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="hub id, directory or .safetensors file to start from (default: gpt2); "
                       "with --random-init a preset name or config.json")
    model.add_argument("--random-init", action="store_true", default=None,
                       help="start from random weights of --model's shape (training from scratch)")
    model.add_argument("--tokenizer", help="vocab directory (default: the model's own files, else "
                       "$MINIGPT_TOKENIZER_DIR)")
    model.add_argument("--template", help="prompt template JSON (default: minigpt's built-in template)")
    opt = parser.add_argument_group("optimization")
    for flag, name, kind, text in OPTIONS:
        opt.add_argument(flag, dest=name, type=kind, help=text)
    run = parser.add_argument_group("running")
    run.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    run.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                     help="auto = bf16 autocast on CUDA, fp32 on CPU (default: auto)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return parser


def explicit_settings(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line."""
    names = [name for _, name, _, _ in OPTIONS] + ["data", "eval_data", "skip_bad", "model", "random_init",
                                                   "tokenizer", "template", "device", "precision"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


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


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser()
    check_out_dir(out, args.resume)
    settings = explicit_settings(args)
    if args.resume:
        result = resume(out, overrides=settings, progress=not args.quiet, log=(lambda _: None) if args.quiet else log)
    else:
        if not args.data:
            raise UsageError("--data is required (or --resume to continue a run)")
        config = TrainConfig(out=str(out), **settings)
        result = train(config, progress=not args.quiet, log=(lambda _: None) if args.quiet else log)
    if result.interrupted:
        print(f"interrupted: resume with: minigpt-finetune --out {out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
