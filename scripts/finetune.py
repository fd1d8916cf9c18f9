#!/usr/bin/env python3
"""Fine-tune GPT-2 on instructions (the same as the installed `minigpt-finetune`). Run with --help for options."""

import sys

from minigpt.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
