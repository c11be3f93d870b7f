"""Plain data shared by every layer: requests, SLOs, sampling parameters, outputs. No torch."""

from hyperflexis.core.outputs import CompletionOutput, Logprob, RequestOutput
from hyperflexis.core.request import FinishReason, Request, RequestStatus
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO, LateAction, SLOClass, SLOClasses, mean_tpot_s

__all__ = [
    "SLO",
    "CompletionOutput",
    "FinishReason",
    "LateAction",
    "Logprob",
    "Request",
    "RequestOutput",
    "RequestStatus",
    "SLOClass",
    "SLOClasses",
    "SamplingParams",
    "mean_tpot_s",
]
