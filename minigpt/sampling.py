"""`minigpt.sampling` is `minigpt.inference.sampling`: the public path from before the inference package, kept."""

import sys

from .inference import sampling

sys.modules[__name__] = sampling
