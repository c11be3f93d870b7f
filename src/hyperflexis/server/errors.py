"""API errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import re
from typing import Any

_PARAM_IN_MESSAGE = re.compile(r"'([A-Za-z_][\w.\[\]-]*)'")

RETRY_AFTER_S = 1  # what a 503 tells the client to wait before trying again


class APIError(Exception):
    """An error answered to the client with `status` and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_value_error(exc: ValueError, param: str | None = None) -> APIError:
    """A 400 from a ValueError of our validation code, whose message names the parameter in
    quotes ("invalid sampling parameter 'top_p': ...")."""
    message = str(exc)
    if param is None:
        match = _PARAM_IN_MESSAGE.search(message)
        param = match.group(1) if match else None
    return bad_request(message, param)


def overloaded(message: str, code: str = "overloaded") -> APIError:
    """503 with Retry-After: admission control turned the request away (or, by `code`, it
    timed out, or the instances that could serve it are gone)."""
    return APIError(
        503,
        message,
        type="server_error",
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def shutting_down() -> APIError:
    """503 with Retry-After: the server drains (SIGTERM) and admits nothing new; a load balancer
    retries elsewhere."""
    return overloaded("the server is shutting down", "shutting_down")


def too_large(max_bytes: int) -> APIError:
    """413: the body is over `--max-request-bytes` (refused before it is all read)."""
    return APIError(
        413,
        f"the request body is over the server's limit of {max_bytes} bytes",
        code="request_too_large",
    )
