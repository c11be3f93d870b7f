"""The backends by name (`serve --backend`): `local` (processes on this host, the default) and
`ray` (one Ray actor per instance), whose module imports Ray only when it is chosen."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperflexis.backends.base import Backend
from hyperflexis.backends.local import LocalBackend
from hyperflexis.core.registry import Registry

DEFAULT_BACKEND = "local"
RAY_MISSING = (
    "the ray backend needs Ray: pip install 'hyperflexis[ray]' (it pins the tested ray version)"
)


def _ray(**options: Any) -> Backend:
    from hyperflexis.backends.ray_backend import RayBackend

    return RayBackend(**options)


BACKENDS: Registry[Callable[..., Backend]] = Registry("backend")
BACKENDS.add("local", LocalBackend)
BACKENDS.add("ray", _ray)


def create_backend(name: str = DEFAULT_BACKEND, **options: Any) -> Backend:
    """The backend registered as `name`, made with its options (`ray`: address, placement).
    Unknown names raise ValueError; `ray` without Ray installed raises ImportError."""
    return BACKENDS.get(name)(**options)


def require_ray() -> None:
    """Raise ValueError (the CLI's exit 2) with how to install Ray when it cannot be imported."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"{RAY_MISSING} ({exc})") from None
