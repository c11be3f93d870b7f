"""Fixtures for the live server tests: a fixed step profile in a tmp folder, so nothing touches the
user's cache (the default model's folder is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fixed_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A step profile with plausible tiny-model coefficients, for tests where the dispatcher's
    predictions need not be accurate."""
    from hyperflexis.perf import ProfiledCostModel, write_profile
    from hyperflexis.perf.profiled import ProfileSample

    path = tmp_path_factory.mktemp("server-profile") / "profile.json"
    model = ProfiledCostModel((2e-3, 1e-4, 1e-6, 2e-3, 1e-6))
    sample = ProfileSample([(16, 0)], [], 0.004)
    write_profile(path, [sample], model, {"model": "tiny", "device": "cpu", "dtype": "float32"})
    return path
