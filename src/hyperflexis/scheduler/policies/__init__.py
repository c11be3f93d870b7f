"""Scheduling policies; importing this package registers them all."""

from hyperflexis.scheduler.policies import baselines, fcfs, hyperflexis, hyperflexis_ablation

__all__ = ["baselines", "fcfs", "hyperflexis", "hyperflexis_ablation"]
