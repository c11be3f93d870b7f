"""The live server tests' fixtures (a fixed step profile), for the Ray backend's scenario."""

from __future__ import annotations

from tests.server.conftest import fixed_profile

__all__ = ["fixed_profile"]
