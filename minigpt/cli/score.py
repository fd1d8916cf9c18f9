"""`minigpt-score` / `scripts/score.py`: perplexity of a text file (sliding window) or of instruction responses.

Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..progress import Progress
from .common import DTYPES, OneLineParser, UsageError, add_quantize_argument, pick_device, run_cli
from .generate import load


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-score",
        description="Score text with GPT-2: per-token log-probabilities and perplexity. --text scores a whole file "
        "with a sliding window over the context; --data scores the responses (+ EOS) of an instruction JSONL "
        "file given their templated prompts, the loss fine-tuning minimises.",
        epilog="examples:\n"
        "  minigpt-score --model gpt2 --text wiki.txt --stride 512\n"
        "  minigpt-score --model runs/sft --data eval.jsonl          # before/after: run it on both models\n"
        "perplexity = exp(mean negative log-likelihood per scored token, natural log).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="gpt2", help="hub id, directory or .safetensors file (default: gpt2)")
    parser.add_argument("--tokenizer", help="vocab directory (default: the model's own files, else "
                        "$MINIGPT_TOKENIZER_DIR)")
    parser.add_argument("--config", help="preset name for a bare .safetensors file without config.json")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="a UTF-8 text file to score as one sequence")
    what.add_argument("--data", help="an instruction JSONL file: score each response given its prompt")
    parser.add_argument("--window", type=int, help="--text: tokens per window (default: the model's context, 1024)")
    parser.add_argument("--stride", type=int, help="--text: tokens between window starts; each window scores "
                        "only its new tokens (default: window / 2)")
    parser.add_argument("--template", help="--data: prompt template JSON (default: the model's saved "
                        "prompt_template.json, else the built-in template)")
    parser.add_argument("--skip-bad", action="store_true", help="--data: skip bad lines instead of failing")
    parser.add_argument("--batch-size", type=int, default=8, help="--data: examples per forward pass (default: 8)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    add_quantize_argument(parser)
    parser.add_argument("--per-token", action="store_true", help="also print each scored token and its log-prob")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(compile=False)
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name in ("window", "stride", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.window is not None and args.window < 2:
        raise UsageError(f"--window must be >= 2, got {args.window}")
    if args.stride and args.window and args.stride > args.window:
        raise UsageError(f"--stride ({args.stride}) must not exceed --window ({args.window})")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    if args.data is None and (args.template or args.skip_bad):
        raise UsageError("--template and --skip-bad apply to --data only")
    if args.text is not None and not Path(args.text).is_file():
        raise UsageError(f"--text file not found: {args.text}")


def template_for(args: argparse.Namespace):
    from ..template import TEMPLATE_FILE, PromptTemplate

    if args.template:
        return PromptTemplate.load(args.template), args.template
    model_path = Path(args.model).expanduser()
    if model_path.is_dir() and (model_path / TEMPLATE_FILE).is_file():
        return PromptTemplate.load(model_path), str(model_path / TEMPLATE_FILE)
    return PromptTemplate(), "built-in"


def score_text_file(args: argparse.Namespace, model, tokenizer):
    from ..inference.scoring import score_ids

    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --text {args.text}: {exc}") from None
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise UsageError(f"{args.text}: {len(ids)} token(s); at least 2 are needed to score anything")
    window = args.window or model.config.n_positions
    if window > model.config.n_positions:
        raise UsageError(f"--window {window} exceeds the model's {model.config.n_positions} positions")
    if args.stride and args.stride > window:
        raise UsageError(f"--stride ({args.stride}) must not exceed the window ({window})")
    stride = args.stride or max(1, window // 2)
    bar = Progress(1, label="windows", enabled=sys.stderr.isatty())

    def on_window(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    score = score_ids(model, ids, window=window, stride=stride, on_window=on_window)
    bar.close()
    return score, {"source": args.text, "window": window, "stride": stride}


def score_data_file(args: argparse.Namespace, model, tokenizer):
    from ..train.data import load_examples
    from ..inference.scoring import score_examples

    template, template_source = template_for(args)
    examples, report = load_examples(args.data, tokenizer, template, model.config.n_positions, skip_bad=args.skip_bad)
    for problem in report.skipped:
        print(f"skipped {problem}", file=sys.stderr)
    score = score_examples(model, examples, batch_size=args.batch_size)
    return score, {"source": args.data, "examples": len(examples), "template": template_source,
                   "data": report.summary()}


def run(args: argparse.Namespace) -> int:
    check_args(args)
    device = pick_device(args.device)
    model, tokenizer = load(args, device)
    score, info = score_data_file(args, model, tokenizer) if args.data else score_text_file(args, model, tokenizer)
    result = {"model": args.model, **info, "tokens": score.num_tokens, "mean_nll": score.mean_nll,
              "perplexity": score.perplexity}
    if args.json:
        if args.per_token:
            result["token_ids"] = score.token_ids
            result["logprobs"] = score.logprobs.tolist()
        print(json.dumps(result, indent=2))
        return 0
    if args.per_token:
        for token, logprob in zip(score.token_ids, score.logprobs.tolist()):
            print(f"{token}\t{tokenizer.decode([token])!r}\t{logprob:.4f}")
    where = f"window {info['window']}, stride {info['stride']}" if args.text else f"{info['examples']} responses"
    print(f"{info['source']}: perplexity {score.perplexity:.4f} (mean NLL {score.mean_nll:.4f} nats/token over "
          f"{score.num_tokens} tokens; {where})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
