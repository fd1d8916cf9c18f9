#!/usr/bin/env python3
"""Generate text with GPT-2 (the same as the installed `minigpt-generate`). Run with --help for options."""

import sys

from minigpt.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
