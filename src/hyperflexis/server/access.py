"""API keys and the SLO a request gets.

With `--api-key`, every request must carry a known key (`Authorization: Bearer KEY`): the server
key, or a key of the SLO config's `api_keys` table. Each key may ask for no more than its bound
class (`api_keys[key]`; the server key and unmapped keys get the default class). A request that
asks for more is CLAMPED, not refused: its class, priority, TTFT and TPOT become no more
important or tighter than its bound class's, so a well-meaning client with a generic header still
gets served, and no client can grant itself priority. Without `--api-key` requests are trusted.
Keys are compared in constant time. `/debug/*` needs a key like the API; `/metrics` stays open (as
vLLM's does, so existing scrapes keep working) unless `--metrics-require-key`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from hyperflexis.core.slo import SLO, SLOClass, SLOClasses
from hyperflexis.server.errors import APIError, from_value_error
from hyperflexis.server.protocol import SLORequest


class Access:
    """Checks keys and resolves each request's SLO."""

    def __init__(
        self,
        slo_classes: SLOClasses,
        api_key: str | None = None,
        *,
        metrics_require_key: bool = False,
    ) -> None:
        self.slo_classes = slo_classes
        self.api_key = api_key  # None: no authentication, no clamping
        self.metrics_require_key = metrics_require_key
        self.max_priority = max(slo_classes[name].priority for name in slo_classes)

    def check_metrics(self, headers: Mapping[str, str]) -> None:
        """401 for a scrape without a known key, only with `--metrics-require-key`."""
        if self.metrics_require_key:
            self.bound_class(headers)

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
        known = _known_key(key, (self.api_key, *classes.api_keys))
        if known is None:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
        return classes[classes.api_keys.get(known, classes.default)]

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
        if request.priority is not None and not 0 <= request.priority <= self.max_priority:
            raise APIError(
                400,
                f"'priority' must be in [0, {self.max_priority}] (0 is the most important), "
                f"got {request.priority}",
                param="priority",
            )
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


def _known_key(key: str, known: tuple[str, ...]) -> str | None:
    """The known key equal to `key`, compared in constant time: every key is compared, so the
    time taken tells nothing about which prefix matched."""
    found = None
    for candidate in known:
        if hmac.compare_digest(key.encode(), candidate.encode()):
            found = candidate
    return found
