#!/usr/bin/env python3
"""Score text or instruction responses with GPT-2 (the same as the installed `minigpt-score`). Run with --help for options."""

import sys

from minigpt.cli.score import main

if __name__ == "__main__":
    sys.exit(main())
