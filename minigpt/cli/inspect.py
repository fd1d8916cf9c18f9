"""`minigpt-inspect` / `scripts/inspect_model.py`: pictures of one prompt's forward pass.

Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import DTYPES, OneLineParser, UsageError, pick_device, run_cli, status


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-inspect",
        description="Look inside GPT-2 on one prompt: attention patterns per head (one PNG per layer, tokens on "
        "both axes), a logit-lens table (each layer's top next-token guess at each position) and the heads whose "
        "outputs most raise or lower the prediction (direct logit attribution), as PNGs and one self-contained "
        "index.html (images inlined, no network). Needs matplotlib: pip install \"minigpt[inspect]\".",
        epilog="example:\n  minigpt-inspect --model gpt2 --prompt \"When Mary and John went to the store, John gave "
        "a drink to\" --out runs/inspect\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="gpt2", help="hub id, directory or .safetensors file (default: gpt2)")
    parser.add_argument("--tokenizer", help="vocab directory (default: the model's own files)")
    parser.add_argument("--config", help="preset name for a bare .safetensors file without config.json")
    parser.add_argument("--prompt", required=True, help="the text to look at (keep it short: one picture per layer "
                        "has a panel per head with T x T cells)")
    parser.add_argument("--out", required=True, help="directory for the PNGs and index.html (created if missing)")
    parser.add_argument("--layers", help="comma-separated layers to draw attention for (default: all)")
    parser.add_argument("--top-heads", type=int, default=10, help="heads in the attribution chart (default: 10)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="(default: float32)")
    return parser


def parse_layers(text: str | None, n_layer: int) -> list[int] | None:
    if text is None:
        return None
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--layers must be comma-separated integers, got {text!r}") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layer]
    if bad or not layers:
        raise UsageError(f"--layers must name layers in 0..{n_layer - 1}, got {text!r}")
    return layers


def run(args: argparse.Namespace) -> int:
    from ..inspect.pictures import draw, pyplot
    from ..loading import load_pretrained
    from ..tokenizer import Tokenizer

    if args.top_heads < 1:
        raise UsageError(f"--top-heads must be >= 1, got {args.top_heads}")
    if not args.prompt:
        raise UsageError("--prompt is empty")
    pyplot()  # a missing matplotlib is one line, before loading anything
    device = pick_device(args.device)
    status(f"loading {args.model} on {device} ...")
    model = load_pretrained(args.model, device=device, dtype=DTYPES[args.dtype], config=args.config)
    tokenizer = Tokenizer.for_model(args.model, args.tokenizer)
    layers = parse_layers(args.layers, model.config.n_layer)
    pictures = draw(model, tokenizer, args.prompt, args.out, layers=layers, top_heads=args.top_heads)
    for path in [*pictures.images.values(), pictures.page]:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
