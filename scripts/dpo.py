#!/usr/bin/env python3
"""DPO on preferences (the same as the installed `minigpt-dpo`). Run with --help for options."""

import sys

from minigpt.cli.dpo import main

if __name__ == "__main__":
    sys.exit(main())
