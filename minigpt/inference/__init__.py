"""Inference: sampling, the shared decode pieces, generation (greedy, sampling, beams), text and streaming,
the compiled path and scoring. Imports only the core and io layers below it."""

from .generation import GenerateOutput, GenerationMixin, generate, stream
from .sampling import SamplingParams
from .scoring import Score, score_examples, score_ids
from .text import Completion, complete, stream_completions

__all__ = ["Completion", "GenerateOutput", "GenerationMixin", "SamplingParams", "Score", "complete", "generate",
           "score_examples", "score_ids", "stream", "stream_completions"]
