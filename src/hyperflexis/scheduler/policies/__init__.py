"""Scheduling policies; importing this package registers them all."""

from hyperflexis.scheduler.policies import fcfs

__all__ = ["fcfs"]
