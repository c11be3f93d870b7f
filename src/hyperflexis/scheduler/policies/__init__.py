"""Scheduling policies; importing this package registers them all."""

from hyperflexis.scheduler.policies import baselines, fcfs, hyperflexis

__all__ = ["baselines", "fcfs", "hyperflexis"]
