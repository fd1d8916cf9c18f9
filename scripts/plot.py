#!/usr/bin/env python3
"""Plot training runs' curves (the same as the installed `minigpt-plot`). Run with --help for options."""

import sys

from minigpt.cli.plot import main

if __name__ == "__main__":
    sys.exit(main())
