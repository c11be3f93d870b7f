"""The dispatch policies; importing this module registers them all."""

from hyperflexis.cluster import dispatch_baselines, dispatch_hyperflexis

__all__ = ["dispatch_baselines", "dispatch_hyperflexis"]
