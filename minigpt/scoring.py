"""`minigpt.scoring` is `minigpt.inference.scoring`: the public path from before the inference package, kept."""

import sys

from .inference import scoring

sys.modules[__name__] = scoring
