#!/usr/bin/env python3
"""Evaluate a checkpoint with lm-evaluation-harness (the same as the installed `minigpt-eval`). Run with --help for options."""

import sys

from minigpt.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
