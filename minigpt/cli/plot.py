"""`minigpt-plot` / `scripts/plot.py`: the curves of one or more training runs as one PNG.

Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import OneLineParser, UsageError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-plot",
        description="Plot training runs from the files their checkpoints hold (train_log.jsonl, trainer_state.json): "
        "one panel per quantity (loss; PPO's score, KL, entropy, clip fraction; preference accuracy and margins; "
        "...), training values as lines, evaluations dashed, runs overlaid with a legend. Needs matplotlib: pip "
        "install \"minigpt[plot]\".",
        epilog="example:\n  minigpt-plot runs/sft runs/ppo --out curves.png\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="checkpoint directories written by a trainer")
    parser.add_argument("--out", default="curves.png", help="the PNG to write (default: curves.png)")
    parser.add_argument("--columns", type=int, default=3, help="panels per row (default: 3)")
    return parser


def run(args: argparse.Namespace) -> int:
    from ..extras import pyplot
    from ..train.plot import plot_runs, read_run

    if args.columns < 1:
        raise UsageError(f"--columns must be >= 1, got {args.columns}")
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got {args.out!r}")
    pyplot("plot")  # a missing matplotlib is one line, before reading anything
    plot_runs([read_run(d) for d in args.runs], args.out, columns=args.columns)
    print(args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
