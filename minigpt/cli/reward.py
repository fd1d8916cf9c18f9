"""`minigpt-reward` / `scripts/reward.py`: train a reward model on preference data, or evaluate one.

Train:    minigpt-reward --model runs/sft --data prefs.jsonl --out runs/rm
Evaluate: minigpt-reward --model runs/rm --eval-data prefs_eval.jsonl [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..train import RewardConfig, train_reward_model
from .common import OneLineParser, UsageError, run_cli
from .trainer import add_training_arguments, explicit_settings, run_trainer

DATA_FORMATS = ("data: JSONL, one record per line: {\"prompt\", \"chosen\", \"rejected\"} (optional \"margin\"), "
                "{\"prompt\", \"ranked\": [best, ..., worst]}, or HH-RLHF's {\"chosen\", \"rejected\"} with the "
                "prompt inside both (up to the last \"\\n\\nAssistant:\"); TRL's conversational shape (lists of "
                "{\"role\", \"content\"} messages) too. Also JSON, CSV, Parquet, save_to_disk dirs and hub ids "
                "(ORG/NAME[:SPLIT]); other field names: --prompt-field etc.")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-reward",
        description="Reward model (InstructGPT step 2): GPT-2's body and a scalar head, trained so that preferred "
        "responses score higher (-log sigmoid(r_chosen - r_rejected - margin), K-wise rankings as all their "
        "pairs in one batch element). Writes transformers' GPT2ForSequenceClassification layout (num_labels 1, "
        "pad = EOS) with identical rewards. With --model RM_DIR --eval-data FILE and no --out: evaluate only.",
        epilog=DATA_FORMATS + "\nexamples:\n"
        "  minigpt-reward --model runs/sft --data examples/preferences.jsonl --out runs/rm\n"
        "  minigpt-reward --model runs/sft --data prefs.jsonl --out runs/rm --normalize-on demos.jsonl\n"
        "  minigpt-reward --model runs/rm --eval-data examples/preferences_eval.jsonl --json   # evaluate\n"
        "  minigpt-reward --out runs/rm --resume          # after Ctrl-C: continue exactly",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_training_arguments(parser, RewardConfig, data_help="training JSONL file of preferences", out_required=False,
                           fields=("prompt", "chosen", "rejected"))
    rm = parser.add_argument_group("reward model")
    rm.add_argument("--center-rewards", type=float, help="add c x mean(r^2) to the loss, keeping rewards near 0 "
                    "(TRL's center_rewards_coefficient; 0.01 is usual) (default: 0)")
    rm.add_argument("--normalize-on", help="demonstrations JSONL (SFT format): after training, shift the rewards "
                    "so these score mean 0 (InstructGPT), folded into the saved weights")
    rm.add_argument("--json", action="store_true", help="evaluate only: print the metrics and every record's "
                    "rewards as JSON")
    return parser


def evaluate(args: argparse.Namespace) -> int:
    """Accuracy, mean margin and per-record rewards of a saved reward model on --eval-data."""
    from ..template import PromptTemplate
    from ..reward_model import RewardModel
    from ..tokenizer import Tokenizer
    from ..train.preferences import load_preferences
    from ..train.reward import score_preferences

    if not args.model or not args.eval_data:
        raise UsageError("evaluating needs --model RM_DIR and --eval-data FILE (to train, pass --data and --out)")
    tokenizer = Tokenizer.for_model(args.model, args.tokenizer)
    template = PromptTemplate.for_model(args.model, args.template)
    model = RewardModel.from_pretrained(args.model)
    max_len = args.max_len or model.config.n_positions
    columns = explicit_settings(args).get("columns", ())
    examples, report = load_preferences(args.eval_data, tokenizer, template, max_len - 1, skip_bad=bool(args.skip_bad),
                                        columns=columns)
    metrics, rewards = score_preferences(model, examples, batch_size=args.micro_batch_size or 8)
    if args.json:
        records = [{"line": e.line, "rewards": r} for e, r in zip(examples, rewards)]
        print(json.dumps({"model": args.model, "data": args.eval_data, **metrics, "pairs": sum(
            e.num_pairs for e in examples), "records": records}, indent=2))
        return 0
    print(f"{args.eval_data}: {len(examples)} records, {sum(e.num_pairs for e in examples)} pairs "
          f"({report.summary()})")
    print(f"accuracy {metrics['accuracy']:.4f} | mean margin {metrics['margin']:.4f} | loss {metrics['loss']:.4f} "
          f"| mean reward {metrics['mean_reward']:.4f}")
    for example, values in zip(examples, rewards):
        print(f"line {example.line}: " + "  ".join(f"{v:+.4f}" for v in values) + "   (best first)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        if args.data or args.resume:
            raise UsageError("training needs --out DIR")
        return evaluate(args)
    if args.json:
        raise UsageError("--json applies to evaluation only (no --out)")
    return run_trainer(args, train_reward_model, RewardConfig, "minigpt-reward",
                       extra_fields=("center_rewards", "normalize_on"))


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
