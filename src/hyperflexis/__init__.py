"""HyperFlexis: multi-SLO LLM serving."""

from importlib.metadata import PackageNotFoundError, version

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.llm import LLM

try:
    __version__ = version("hyperflexis")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["LLM", "SamplingParams", "__version__"]
