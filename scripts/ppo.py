#!/usr/bin/env python3
"""PPO against a reward model or a Python reward (the same as the installed `minigpt-ppo`). Run with --help."""

import sys

from minigpt.cli.ppo import main

if __name__ == "__main__":
    sys.exit(main())
