"""`minigpt-dpo` / `scripts/dpo.py`: direct preference optimisation of a fine-tuned model on preference data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..train import DPOConfig, train_dpo
from .common import OneLineParser, run_cli
from .reward import DATA_FORMATS
from .trainer import add_training_arguments, run_trainer


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-dpo",
        description="DPO (Rafailov et al. 2023): train the policy directly on comparisons, against the frozen "
        "start model as reference: -log sigmoid(beta [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)"
        "(rejected)]). Writes an ordinary LM checkpoint (hub layout + prompt template).",
        epilog=DATA_FORMATS + "\nexamples:\n"
        "  minigpt-dpo --model runs/sft --data examples/preferences.jsonl --out runs/dpo --beta 0.1\n"
        "  minigpt-dpo --model runs/sft --data prefs.jsonl --out runs/ipo --loss ipo\n"
        "  minigpt-dpo --out runs/dpo --resume            # after Ctrl-C: continue exactly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_arguments(parser, DPOConfig, data_help="training JSONL file of preferences",
                           fields=("prompt", "chosen", "rejected"))
    dpo = parser.add_argument_group("DPO")
    dpo.add_argument("--beta", type=float, help="strength of the pull towards the reference; smaller = further "
                     "from it (default: 0.1)")
    dpo.add_argument("--loss", choices=["sigmoid", "ipo"], help="sigmoid = DPO; ipo = (h - 1/(2 beta))^2 on "
                     "per-token mean log-ratios (default: sigmoid)")
    dpo.add_argument("--label-smoothing", type=float, help="conservative DPO: the share of labels assumed flipped, "
                     "in [0, 0.5) (default: 0)")
    dpo.add_argument("--no-precompute-ref", dest="precompute_ref", action="store_false", default=None,
                     help="keep the reference model loaded during training instead of computing its log-probs "
                     "once up front (twice the memory; the default precomputes them)")
    return parser


def run(args: argparse.Namespace) -> int:
    return run_trainer(args, train_dpo, DPOConfig, "minigpt-dpo",
                       extra_fields=("beta", "loss", "label_smoothing", "precompute_ref"))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
