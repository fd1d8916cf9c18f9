#!/usr/bin/env python3
"""Pictures of one prompt's forward pass (the same as the installed `minigpt-inspect`). Run with --help for options."""

import sys

from minigpt.cli.inspect import main

if __name__ == "__main__":
    sys.exit(main())
