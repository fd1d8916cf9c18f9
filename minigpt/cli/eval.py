"""`minigpt-eval`: run lm-evaluation-harness tasks on a minigpt checkpoint (`minigpt.inference.harness.MinigptLM`).

Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .common import DTYPES, OneLineParser, UsageError, pick_device, run_cli, status


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-eval",
        description="Evaluate a GPT-2 checkpoint with lm-evaluation-harness (pip install \"minigpt[eval]\"): "
        "multiple choice, perplexity and generation tasks, with the numbers lm-eval's own hf model gives on the "
        "same checkpoint. Tasks come from lm-eval's registry (hub datasets, cached) or from YAML files under "
        "--include-path.",
        epilog="examples:\n"
        "  minigpt-eval --model gpt2 --tasks lambada_openai,hellaswag --batch-size 32\n"
        "  minigpt-eval --model runs/sft --tasks my_task --include-path my_tasks/ --output results.json\n"
        "the same through lm-eval's API: lm_eval.simple_evaluate(model=MinigptLM(\"gpt2\"), tasks=[...])",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="gpt2", help="hub id, directory or .safetensors file (default: gpt2)")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task or group names")
    parser.add_argument("--include-path", help="a directory of extra task YAML files")
    parser.add_argument("--num-fewshot", type=int, help="examples in each prompt (default: the task's)")
    parser.add_argument("--limit", type=float, help="only the first N documents per task (< 1: a fraction)")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per forward pass (default: 16)")
    parser.add_argument("--max-length", type=int, help="longest input in tokens (default: the model's context)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampled generation and few-shot draws")
    parser.add_argument("--output", help="write the results (metrics, configs, versions) to this JSON file")
    parser.add_argument("--log-samples", action="store_true", help="--output: also keep every document's "
                        "inputs, outputs and metrics")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be > 0, got {args.limit}")
    if args.include_path and not Path(args.include_path).is_dir():
        raise UsageError(f"--include-path is not a directory: {args.include_path}")
    if args.log_samples and not args.output:
        raise UsageError("--log-samples needs --output")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from ..inference.harness import MinigptLM, evaluate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UsageError("--tasks names no task")
    device = pick_device(args.device)
    status(f"loading {args.model} on {device}")
    model = MinigptLM(args.model, batch_size=args.batch_size, max_length=args.max_length, device=str(device),
                      dtype=args.dtype, seed=args.seed)
    results = evaluate(model, tasks, include_path=args.include_path, num_fewshot=args.num_fewshot,
                       limit=args.limit, seed=args.seed, log_samples=args.log_samples)
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(out)
        status(f"results written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
