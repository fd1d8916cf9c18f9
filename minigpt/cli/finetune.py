"""`minigpt-finetune` / `scripts/finetune.py`: supervised fine-tuning on an instruction JSONL file.

Errors are one line on stderr and a non-zero exit. Ctrl-C finishes the current step, writes a resumable
checkpoint and exits 130; `--resume` continues it exactly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..train import TrainConfig, train
from .common import OneLineParser, run_cli
from .trainer import add_training_arguments, run_trainer


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-finetune",
        description="Supervised fine-tuning (InstructGPT step 1): train GPT-2 on instruction/response pairs, with "
        "the loss on the responses only. Writes a checkpoint (hub layout: model.safetensors, config.json, vocab, "
        "prompt_template.json, plus the training state) that minigpt and transformers both load.",
        epilog="data: JSONL, one record per line: {\"prompt\": ..., \"response\": ...} or Alpaca's "
        "{\"instruction\": ..., \"input\": ..., \"output\": ...}, or TRL's {\"messages\": [{\"role\", \"content\"}, ...]} "
        "(the last assistant message is the response). Also JSON, CSV, Parquet, save_to_disk dirs and hub ids "
        "(ORG/NAME[:SPLIT]); other field names: --prompt-field, --response-field.\n"
        "examples:\n"
        "  minigpt-finetune --data examples/instructions.jsonl --out runs/sft --model gpt2 --epochs 3\n"
        "  minigpt-finetune --out runs/sft --resume            # after Ctrl-C: continue exactly\n"
        "  torchrun --nproc_per_node 2 scripts/finetune.py --data d.jsonl --out runs/sft   # data parallel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_arguments(parser, TrainConfig, data_help="training JSONL file of demonstrations",
                           fields=("prompt", "response"))
    return parser


def run(args: argparse.Namespace) -> int:
    return run_trainer(args, train, TrainConfig, "minigpt-finetune")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
