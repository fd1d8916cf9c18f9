#!/usr/bin/env python3
"""Train GPT-2 on raw text (the same as the installed `minigpt-pretrain`). Run with --help for options."""

import sys

from minigpt.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
