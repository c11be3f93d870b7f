"""HyperFlexis: multi-SLO LLM serving."""

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.llm import LLM

__all__ = ["LLM", "SamplingParams"]
