"""The exceptions minigpt raises. Each message says what went wrong and, where it can, what to do."""

from __future__ import annotations


class MiniGPTError(Exception):
    """Base class of every error minigpt raises on purpose."""


class ConfigError(MiniGPTError, ValueError):
    """A model configuration this architecture cannot honour (the message names the field)."""


class CheckpointError(MiniGPTError):
    """A checkpoint that cannot be found, read or matched to the model (the message names file and keys)."""


class TokenizerError(MiniGPTError):
    """Tokenizer files that cannot be found or do not agree with each other."""


class GenerationError(MiniGPTError, ValueError):
    """Invalid generation arguments, or a prompt that does not fit the context window."""


class DataError(MiniGPTError, ValueError):
    """A data file (instructions, preferences, prompts, a template) that cannot be used; the message names the
    file and line."""
