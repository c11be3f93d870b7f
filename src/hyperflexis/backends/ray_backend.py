"""The `ray` backend (`serve --backend ray`): each instance is a Ray actor, placed by Ray across
the cluster's nodes with its resources (CPUs, GPUs, custom resources for placement).

Ray places, starts, watches and stops the instances; nothing per step goes through it (an actor
call costs about 20 ms here). The actor's one method runs the ordinary instance loop
(`worker.run_instance`) over two `multiprocessing.connection` sockets that it opens back to a
listener the server holds (`ChannelListener`, authenticated with a random key): commands in,
reports out, exactly as the local backend's pipes. An actor that dies, or a node that is lost,
closes them (or falls silent: the heartbeat), and the supervisor fails the instance as it does a
dead local process.

When the cluster has too few free resources for a new instance, the backend asks Ray's
autoscaler for them (`ray.autoscaler.sdk.request_resources`); the instance counts as starting
(no pid, no exit code) until Ray places it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources

from hyperflexis.backends.base import Backend, ConnectedHandler, InstanceHandle
from hyperflexis.backends.channels import ChannelListener, connect_back
from hyperflexis.backends.local import unlink_dead_segments
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.transfer.per_link import NODE_ENV  # an actor's Ray node id: links choose by it
from hyperflexis.transfer.torch_dist import NODE_IP_ENV  # its node's address: links bind to it

logger = logging.getLogger(__name__)

NAMESPACE = "hyperflexis"  # the Ray namespace of the actors (named hf-<instance>-<n>)
REAP_INTERVAL_S = 0.5  # how often ended actors are looked for (and freed)
Placement = Mapping[str, Mapping[str, float]]  # role or instance id -> custom resources


class InstanceActor:
    """One instance, as a Ray actor (`ray.remote` wraps it when the backend starts)."""

    def run(self, spec: InstanceSpec, address: tuple[str, int], authkey: bytes, token: str) -> int:
        """Connect back, then serve until told to stop; returns 0 (its exit code)."""
        from hyperflexis.backends.worker import run_instance
        from hyperflexis.transfer.shm import SEGMENT_PREFIX, unlink_orphaned_segments
        from hyperflexis.transfer.weights import WEIGHT_SEGMENT_PREFIX

        asked_s = time.monotonic()  # Ray may have started this worker process long before
        context = ray.get_runtime_context()
        node_ip = ray.util.get_node_ip_address()
        os.environ[NODE_ENV] = context.get_node_id()
        os.environ[NODE_IP_ENV] = node_ip
        for prefix in (SEGMENT_PREFIX, WEIGHT_SEGMENT_PREFIX):  # of killed actors on this node
            unlink_orphaned_segments(prefix=prefix)
        where = (context.get_node_id(), node_ip, os.getpid())
        commands, reports = connect_back(address, authkey, token, where)
        run_instance(spec, commands, reports, asked_s, exit_process=False)
        return 0


class RayProcess:
    """An instance actor as an `InstanceProcess`: its exit is its `run` call ending."""

    def __init__(self, actor: Any, run: Any, name: str) -> None:
        self.actor, self.run, self.name = actor, run, name
        self.node_id = ""  # its Ray node, once it connected (from its hello)
        self.node_ip = ""
        self._pid: int | None = None
        self._exitcode: int | None = None
        self._killed = False

    def placed(self, node_id: str, node_ip: str, pid: int) -> None:
        self.node_id, self.node_ip, self._pid = node_id, node_ip, pid

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def node(self) -> str:
        return self.node_id

    @property
    def exitcode(self) -> int | None:
        if self._exitcode is None:
            self.join(0)
        return self._exitcode

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        if self._exitcode is not None:
            return
        done, _ = ray.wait([self.run], timeout=timeout)
        if not done:
            return
        try:
            self._exitcode = int(ray.get(self.run))
        except ray.exceptions.RayError:
            self._exitcode = -9 if self._killed else 1  # killed, or the actor or node died

    def terminate(self) -> None:
        self.kill()

    def kill(self) -> None:
        """`ray.kill`: the actor's process ends at once, its sockets close."""
        self._killed = self._exitcode is None
        ray.kill(self.actor, no_restart=True)

    def describe(self) -> dict[str, object]:
        return {"backend": "ray", "node": self.node_id, "node_ip": self.node_ip, "actor": self.name}


class RayBackend(Backend):
    """Instances as Ray actors; see the module docstring."""

    name = "ray"
    # A replacement's node is known only once Ray placed it: it maps a peer on its own node and
    # receives over torch.distributed from one elsewhere (instance_weights.peer_sources).
    peer_weight_source = "peer-dist"

    def __init__(
        self,
        address: str | None = "auto",
        placement: Placement | None = None,
        num_cpus: float = 1.0,
        listen_host: str | None = None,
    ) -> None:
        """`address`: the cluster's (`auto`: the one `ray start` runs here; None: start one);
        `placement`: custom resources per role or instance id (the id wins); `num_cpus` per
        instance (GPUs: one per CUDA instance); `listen_host`: where instances connect back
        (default this node's Ray address)."""
        if not ray.is_initialized():
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        self.placement = dict(placement or {})
        self.num_cpus = num_cpus
        self.listener = ChannelListener(listen_host or ray.util.get_node_ip_address())
        self._actor_class = ray.remote(InstanceActor)
        self._names = itertools.count()
        self._demand: dict[str, dict[str, float]] = {}  # actor name -> its bundle, while it runs
        self._running: dict[str, RayProcess] = {}  # actor name -> process, until it ended
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="hf-ray-reaper", daemon=True)
        self._reaper.start()

    def resources_of(self, spec: InstanceSpec) -> dict[str, float]:
        """The bundle one instance needs: CPUs, a GPU on CUDA, its placement's resources."""
        custom = self.placement.get(spec.instance_id)
        if custom is None:
            custom = self.placement.get(spec.scheduler_config.role, {})
        bundle = {"CPU": self.num_cpus, **custom}
        if spec.device.startswith("cuda"):
            bundle["GPU"] = 1.0
        return bundle

    def spawn(self, spec: InstanceSpec, on_connected: ConnectedHandler) -> InstanceHandle:
        bundle = self.resources_of(spec)
        name = f"hf-{spec.instance_id}-{next(self._names)}"
        self._ask_autoscaler(name, bundle)
        custom = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        actor = self._actor_class.options(
            name=name,
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0.0),
            resources=custom,
            max_restarts=0,
        ).remote()
        token = self.listener.expect()
        address, authkey = self.listener.address, self.listener.authkey
        run = actor.run.remote(spec, address, authkey, token)  # type: ignore[attr-defined]
        process = RayProcess(actor, run, name)
        with self._lock:
            self._running[name] = process
        handle = InstanceHandle(spec, process, None, None)
        handle.start_sender()

        def connected(hello: tuple[str, str, int]) -> InstanceHandle:
            process.placed(*hello)
            return handle

        self.listener.on(token, connected, on_connected)
        return handle

    def _ask_autoscaler(self, name: str, bundle: dict[str, float]) -> None:
        """Keep Ray's autoscaler asking for every running instance's bundle when the free
        resources do not hold this one (a cluster without an autoscaler ignores it)."""
        self._demand[name] = bundle
        free = ray.available_resources()
        if all(free.get(key, 0.0) >= amount for key, amount in bundle.items()):
            return
        logger.warning("ray: %s needs %s, more than is free: asking the autoscaler", name, bundle)
        request_resources(bundles=list(self._demand.values()))

    def _reap(self) -> None:
        """Free each actor whose `run` ended (a retired instance returns from it and would
        otherwise hold its resources until the server stops)."""
        while not self._closing.wait(REAP_INTERVAL_S):
            with self._lock:
                running = list(self._running.values())
            if not running:
                continue
            runs = [p.run for p in running]
            done, _ = ray.wait(runs, num_returns=len(runs), timeout=0)
            for process in (p for p in running if p.run in done):
                process.join(0)
                ray.kill(process.actor, no_restart=True)
                with self._lock:
                    self._running.pop(process.name, None)
                    self._demand.pop(process.name, None)

    def cleanup(self, handle: InstanceHandle) -> None:
        """Free the actor's worker, and on this host its shared memory (an actor elsewhere
        sweeps its node's orphans when the next one starts there)."""
        process = handle.process
        assert isinstance(process, RayProcess)
        self._demand.pop(process.name, None)
        if process.exitcode is None:
            return
        ray.kill(process.actor, no_restart=True)
        if process.node_ip == self.listener.address[0]:
            unlink_dead_segments(process)

    def close(self) -> None:
        self._closing.set()
        self._reaper.join(5.0)
        self.listener.close()
        self._demand.clear()
        ray.shutdown()
