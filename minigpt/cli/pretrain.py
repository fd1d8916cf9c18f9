"""`minigpt-pretrain` / `scripts/pretrain.py`: train GPT-2 on raw text, from scratch or from a checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..train import PretrainConfig, train_lm
from .common import OneLineParser, run_cli
from .trainer import add_training_arguments, run_trainer

STEP_HELP = {
    "eval_fraction": "share of the corpus's tokens held out for evaluation, taken from its end",
    "epochs": "passes over the training tokens",
    "batch_size": "windows of --block-size + 1 tokens per optimizer step, over all processes",
    "micro_batch_size": "windows per forward pass per process; the rest of the batch is gradient accumulation "
    "(default: the whole per-process batch)",
    "max_len": "the longest window the model may see (default: its context); --block-size picks the window",
    "warmup_steps": "linear warmup steps (default: 5%% of the steps)",
    "seed": "seed of the window offsets and any new weights",
}
LM_FIELDS = ("block_size", "sequential", "doc_separator", "cache_dir", "eval_windows")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-pretrain",
        description="Train GPT-2 on raw text (nanoGPT's job): from random weights (--random-init) or continuing a "
        "checkpoint. The corpus is tokenized once into a memory-mapped uint16 token file, cached beside it and "
        "reused while the text and tokenizer stay the same; each step reads --batch-size windows of "
        "--block-size + 1 tokens at seeded random offsets (or in order with --sequential). Eval: the cross "
        "entropy and perplexity of held-out tokens. Writes the hub layout (minigpt and transformers load it).",
        epilog="corpus: a UTF-8 text file, a directory (every file under it, sorted) or a quoted glob; every "
        "document ends with <|endoftext|> (a file is one document unless --doc-separator splits it).\n"
        "examples:\n"
        "  minigpt-pretrain --text corpus.txt --random-init --model my_config.json --out runs/lm --max-steps 2000\n"
        "  minigpt-pretrain --text 'books/*.txt' --model gpt2 --out runs/gpt2-books --lr 1e-4 --epochs 1\n"
        "  minigpt-pretrain --out runs/lm --resume                   # after Ctrl-C: continue exactly\n"
        "  torchrun --nproc_per_node 8 scripts/pretrain.py --text data/ --random-init --model gpt2 \\\n"
        "      --batch-size 480 --micro-batch-size 12 --out runs/gpt2     # GPU data parallel (bf16 autocast)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_arguments(parser, PretrainConfig, data_help="the text corpus: a file, a directory or a glob",
                           data_flag="--text", eval_flag="--eval-text",
                           eval_help="a separate evaluation corpus (file, directory or glob)", help_overrides=STEP_HELP)
    lm = parser.add_argument_group("raw text")
    lm.add_argument("--block-size", type=int, help="tokens per training window (default: the model's context)")
    lm.add_argument("--sequential", action="store_true", default=None,
                    help="walk the corpus in order, window after window, instead of random offsets")
    lm.add_argument("--doc-separator", help="a string that separates documents within a file (each document "
                    "ends with <|endoftext|>; default: one document per file)")
    lm.add_argument("--cache-dir", help="where token files are kept (default: .minigpt_tokens/ beside the corpus)")
    lm.add_argument("--eval-windows", type=int, help="evaluate on at most this many windows, evenly spaced "
                    "over the held-out tokens (default: 64)")
    return parser


def run(args: argparse.Namespace) -> int:
    return run_trainer(args, train_lm, PretrainConfig, "minigpt-pretrain", extra_fields=LM_FIELDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
