"""An instance process's half of a role flip and of a drain's migration (DESIGN.md §10.3).

- **Role flip** (`RoleSwitch`): a drained instance gets a new scheduler in the other role over
  the same engine, model weights and KV cache (its pool stays registered with its transport),
  and answers with its `InstanceReady` in the new role: no process start, no weight load.
- **Migration out** (`migrate_out`): a request stops decoding here between two steps (every
  token it made is already reported), its KV pinned under a lease for the instance that
  continues it to pull, as a prefill instance's finished prompt is.
"""

from __future__ import annotations

import dataclasses
import time

from hyperflexis.backends.messages import InstanceReady, MigratedOut
from hyperflexis.cluster.snapshot import take_snapshot
from hyperflexis.engine.factory import BuiltEngine, InstanceSpec, build_scheduler
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.scheduler.config import Role


class RoleSwitch:
    """Switches one instance's scheduler to another role, in place."""

    def __init__(self, spec: InstanceSpec, built: BuiltEngine, ready: InstanceReady) -> None:
        self.spec, self.built, self.ready = spec, built, ready

    def __call__(self, role: Role) -> InstanceReady:
        """The instance in `role` from now on; its new `InstanceReady` (start phases plus
        `switch_s`). RuntimeError when it still holds work or KV: only a drained one flips."""
        start = time.perf_counter()
        engine = self.built.engine
        old = engine.scheduler
        if (
            engine.has_unfinished()
            or len(old.leases)
            or old.kv.num_free_blocks != old.kv.num_blocks
        ):
            raise RuntimeError(f"{self.spec.instance_id}: role switch to {role} while not drained")
        config = dataclasses.replace(self.spec.scheduler_config, role=role)
        self.spec = dataclasses.replace(self.spec, scheduler_config=config)
        scheduler = build_scheduler(self.spec, self.built.runner, self.built.cost_model)
        scheduler.num_preemptions = old.num_preemptions  # totals since the process started
        scheduler.num_rejections = old.num_rejections
        engine.scheduler = scheduler
        phases = {**self.ready.start_phases_s, "switch_s": time.perf_counter() - start}
        snapshot = take_snapshot(self.spec.instance_id, scheduler, time.monotonic())
        self.ready = dataclasses.replace(
            self.ready, role=role, snapshot=snapshot, start_phases_s=phases
        )
        return self.ready


def migrate_out(engine: LLMEngine, request_id: str) -> MigratedOut:
    """Stop `request_id` here for another instance to continue (`MigrateOut`'s answer)."""
    moved = engine.migrate_out(request_id)
    if moved is None:
        return MigratedOut(request_id, moved=False)
    lease, output = moved
    num_output_tokens = len(output.outputs[0].token_ids)
    queue_s = output.metrics.queue_s or 0.0
    if lease is None:  # it held no KV (preempted): the target recomputes
        return MigratedOut(request_id, True, num_output_tokens=num_output_tokens, queue_s=queue_s)
    kv = engine.scheduler.kv
    return MigratedOut(
        request_id,
        True,
        lease.block_ids[: kv.blocks_for(lease.num_tokens)],
        lease.num_tokens,
        num_output_tokens,
        lease_s=max(0.0, lease.expires_s - engine.clock()),
        queue_s=queue_s,
    )
