"""The one registry type: duplicates and unknown names fail loudly, known names are listed, and
every registry in the tree is one."""

from __future__ import annotations

import pytest

from hyperflexis.core.registry import Registry


class _Alpha:
    name = "alpha"


def test_register_get_and_names() -> None:
    registry: Registry[type[object]] = Registry("widget")
    assert registry.register(_Alpha) is _Alpha
    registry.add("beta", object)
    assert registry.get("alpha") is _Alpha
    assert registry.names() == ["alpha", "beta"]
    assert "alpha" in registry and "gamma" not in registry


def test_duplicate_and_unknown_names_fail_loudly() -> None:
    registry: Registry[type[object]] = Registry("widget")
    registry.register(_Alpha)
    with pytest.raises(ValueError, match="widget 'alpha' is registered twice"):
        registry.register(_Alpha)
    with pytest.raises(ValueError, match=r"unknown widget 'gamma'; known: alpha"):
        registry.get("gamma")


def test_every_registry_is_the_shared_type() -> None:
    from hyperflexis.cluster import registry as dispatchers
    from hyperflexis.cluster.scaler import registry as scalers
    from hyperflexis.perf import registry as cost_models
    from hyperflexis.scheduler import registry as policies
    from hyperflexis.workloads import arrivals, lengths

    for registry in (
        policies._POLICIES,
        dispatchers._DISPATCHERS,
        scalers._SCALERS,
        cost_models._KINDS,
        arrivals._ARRIVALS,
        lengths._LENGTHS,
    ):
        assert isinstance(registry, Registry)
        assert registry.names()
