"""Optional dependencies: importing one that is missing is one clear line saying what to install."""

from __future__ import annotations

from .errors import MiniGPTError


class MissingExtra(MiniGPTError, ImportError):
    """An optional dependency is not installed (the message says what to install)."""


def pyplot(extra: str = "inspect"):
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra(f"this needs matplotlib: pip install \"minigpt[{extra}]\" (or pip install "
                           "matplotlib)") from None
    return plt
