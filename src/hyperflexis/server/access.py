"""API keys and the SLO a request gets.

With `--api-key`, every request must carry a known key (`Authorization: Bearer KEY`): the server
key, or a key of the SLO config's `api_keys` table. Each key may ask for no more than its bound
class (`api_keys[key]`; the server key and unmapped keys get the default class). A request that
asks for more is CLAMPED, not refused: its class, priority, TTFT and TPOT become no more
important or tighter than its bound class's, so a well-meaning client with a generic header still
gets served, and no client can grant itself priority. Without `--api-key` requests are trusted.
"""

from __future__ import annotations

from collections.abc import Mapping

from hyperflexis.core.slo import SLO, SLOClass, SLOClasses
from hyperflexis.server.errors import APIError, from_value_error
from hyperflexis.server.protocol import SLORequest


class Access:
    """Checks keys and resolves each request's SLO."""

    def __init__(self, slo_classes: SLOClasses, api_key: str | None = None) -> None:
        self.slo_classes = slo_classes
        self.api_key = api_key  # None: no authentication, no clamping

    def bound_class(self, headers: Mapping[str, str]) -> SLOClass | None:
        """The most important class the caller may ask for; None when keys are off. Raises
        401 for a missing or unknown key."""
        if self.api_key is None:
            return None
        authorization = headers.get("authorization", "")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        classes = self.slo_classes
        if key != self.api_key and key not in classes.api_keys:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
        return classes[classes.api_keys.get(key, classes.default)]

    def resolve(self, request: SLORequest, bound: SLOClass | None) -> SLO:
        """The request's SLO: its class (or the default) with its overrides, clamped to
        `bound`. A bad class or value raises 400."""
        classes = self.slo_classes
        try:
            base = classes[request.slo_class or classes.default]
        except ValueError as exc:  # an unknown class; the message lists the known ones
            raise APIError(400, str(exc), param="slo_class") from None
        if bound is not None and base.priority < bound.priority:
            base = bound
        priority = base.priority if request.priority is None else request.priority
        ttft_s = base.ttft_s if request.ttft_ms is None else request.ttft_ms / 1000.0
        tpot_s = base.tpot_s if request.tpot_ms is None else request.tpot_ms / 1000.0
        if bound is not None:
            priority = max(priority, bound.priority)
            ttft_s = max(ttft_s, bound.ttft_s)
            tpot_s = max(tpot_s, bound.tpot_s)
        try:
            return SLO(ttft_s, tpot_s, priority, base.name, base.late)
        except ValueError as exc:
            raise from_value_error(exc) from None
