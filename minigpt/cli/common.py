"""What every minigpt command shares: one-line errors and exit codes, the parser, device choice, status lines.

Errors are one line on stderr and a non-zero exit, never a traceback (set MINIGPT_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

import torch

from ..errors import MiniGPTError
from ..hub import quiet_hub_logs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXIT_ERROR, EXIT_USAGE = 1, 2


class UsageError(MiniGPTError):
    """A bad command-line argument."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but CUDA is not available on this machine (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps asked for, but MPS is not available on this machine (try --device cpu)")
    return torch.device(name)


def status(message: str) -> None:
    """Progress on stderr, only for a person watching (errors stay one line when piped)."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def run_cli(parser: argparse.ArgumentParser, command, argv: Sequence[str] | None = None) -> int:
    """Parse, run `command(args)`, and turn every error into one line on stderr and an exit status."""
    args = parser.parse_args(argv)
    quiet_hub_logs()
    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"
    try:
        return command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MiniGPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set MINIGPT_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_ERROR


def add_quantize_argument(parser) -> None:
    """--quantize: int8 weight-only inference (see minigpt.quantize)."""
    parser.add_argument("--quantize", choices=["int8"], help="int8: store every projection and the LM head as "
                        "int8 with one scale per output channel (a quarter of fp32's bytes; decoding reads every "
                        "weight per token, so it is faster on CPUs) at a small accuracy cost; the weight "
                        "products round their activations and results to bfloat16, the rest stays in --dtype "
                        "(default: no quantization)")
