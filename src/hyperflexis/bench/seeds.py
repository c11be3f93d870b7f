"""Workload seeds, named once for every comparison: the seeds constants were tuned on, and the
seeds results are reported on. A constant chosen on the seeds it is then judged on would report
its fit to their noise, not how it generalises, so the two sets are disjoint."""

from __future__ import annotations

# Seed 1 chose the tuned constants: `prefill_rate_margin`, the scaler's scale-in headroom,
# window and cooldown, its error-budget floor, every baseline's tuned setting, and issue 18 item
# 12's goodput settings (`shed_order` work over priority, `oversize_load` 1.0 over 0.9 and 1.1;
# `scheduler/oversize.py`'s 10 s window was not varied). Two saw seed 0 before this split (the
# scaler's `calm_headroom`; `tpot_margin`, from live runs): docs/tuning.md lists each constant
# with the seeds that chose it. Tune new constants here too, so the evaluation seeds stay unseen.
TUNING_SEEDS: tuple[int, ...] = (1,)

# The seeds comparisons report on (means over all of them; a single-seed run takes the first,
# 0, which the issue-4 comparison's recorded figures used). Disjoint from `TUNING_SEEDS`.
EVALUATION_SEEDS: tuple[int, ...] = (0, 2, 3, 4, 5)

if set(TUNING_SEEDS) & set(EVALUATION_SEEDS):  # a guard on edits of this file
    raise ValueError("TUNING_SEEDS and EVALUATION_SEEDS must be disjoint")
