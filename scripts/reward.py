#!/usr/bin/env python3
"""Train or evaluate a reward model on preferences (the same as the installed `minigpt-reward`). Run with --help for options."""

import sys

from minigpt.cli.reward import main

if __name__ == "__main__":
    sys.exit(main())
