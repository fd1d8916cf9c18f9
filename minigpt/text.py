"""`minigpt.text` is `minigpt.inference.text`: the public path from before the inference package, kept."""

import sys

from .inference import text

sys.modules[__name__] = text
