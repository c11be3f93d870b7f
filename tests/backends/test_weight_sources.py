"""Instances that take their weights from a live peer (real processes): they serve the tokens a
disk-loaded engine does; a corrupted checksum or a peer killed mid-load falls back to disk and
still serves them; a pre-started worker becomes a serving instance."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperflexis.backends.local import InstanceHandle, InstancePool
from hyperflexis.backends.prestart import PrestartPool
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.transfer.weights import WeightManifest, unlink_orphaned_weight_segments
from tests.backends.weight_peers import (
    TIMEOUT_S,
    disk_tokens,
    instance_pausing_after_its_check,
    serve,
    spec,
    wait_ready,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def expected(server_model_dir: Path) -> list[int]:
    return disk_tokens(server_model_dir)


@pytest.fixture
def publisher(server_model_dir: Path) -> Iterator[InstancePool]:
    pool = InstancePool([spec("peer", server_model_dir, publish_weights=True)])
    pool.start(TIMEOUT_S)
    yield pool
    pool.stop()


def manifest_of(pool: InstancePool) -> WeightManifest:
    ready = pool.get("peer").ready
    assert ready is not None and ready.weights_manifest is not None
    return ready.weights_manifest


def peer_spec(model: Path, manifest: WeightManifest) -> InstanceSpec:
    return spec("new", model, weight_source="peer", peer_weights=manifest)


def assert_serves(handle: InstanceHandle, expected: list[int]) -> None:
    tokens, last = serve(handle)
    assert tokens == expected
    assert last.snapshot.num_free_blocks == last.snapshot.num_blocks


def test_an_instance_loads_from_a_live_peer_and_serves_the_disk_tokens(
    server_model_dir: Path, expected: list[int], publisher: InstancePool
) -> None:
    peer = publisher.get("peer")
    assert peer.ready is not None and peer.ready.weight_source == "disk"
    assert_serves(peer, expected)  # the publisher runs on its own segment
    new_spec = spec(
        "new", server_model_dir, weight_source="peer", peer_weights=manifest_of(publisher)
    )
    pool = InstancePool([new_spec])
    pool.start(TIMEOUT_S)
    try:
        handle = pool.get("new")
        assert handle.ready is not None
        assert handle.ready.weight_source == "peer" and handle.ready.weight_failures == ()
        assert set(handle.ready.start_phases_s) == {"startup_s", "weights_s", "warmup_s"}
        assert handle.ready.start_phases_s["startup_s"] > 0  # a fresh process: imports
        assert_serves(handle, expected)
    finally:
        pool.stop()


def test_a_corrupted_checksum_falls_back_to_disk_and_serves_the_disk_tokens(
    server_model_dir: Path, expected: list[int], publisher: InstancePool
) -> None:
    manifest = manifest_of(publisher)
    entry = max(manifest.tensors, key=lambda e: e.num_bytes)
    with open(manifest.path, "r+b") as segment:  # a bad page, as the new instance sees it
        segment.seek(entry.offset + 7)
        byte = segment.read(1)[0]
        segment.seek(-1, os.SEEK_CUR)
        segment.write(bytes([byte ^ 0x10]))
    pool = InstancePool(
        [spec("new", server_model_dir, weight_source="peer", peer_weights=manifest)]
    )
    pool.start(TIMEOUT_S)
    try:
        ready = pool.get("new").ready
        assert ready is not None and ready.weight_source == "disk"
        assert "failed its checksum" in ready.weight_failures[0]
        assert_serves(pool.get("new"), expected)
    finally:
        pool.stop()


def test_a_peer_killed_mid_load_falls_back_to_disk_and_serves_the_disk_tokens(
    server_model_dir: Path, expected: list[int], publisher: InstancePool
) -> None:
    manifest = manifest_of(publisher)
    context = multiprocessing.get_context("spawn")
    command_reader, command_writer = context.Pipe(duplex=False)
    report_reader, report_writer = context.Pipe(duplex=False)
    gate, child_gate = context.Pipe()
    new_spec = peer_spec(server_model_dir, manifest)
    process = context.Process(
        target=instance_pausing_after_its_check,
        args=(new_spec, command_reader, report_writer, child_gate),
        daemon=True,
    )
    process.start()
    for conn in (command_reader, report_writer, child_gate):
        conn.close()
    handle = InstanceHandle(new_spec, process, command_writer, report_reader)
    handle.start_sender()
    try:
        assert gate.poll(TIMEOUT_S) and gate.recv() == "checked"
        peer = publisher.get("peer").process
        peer.kill()  # SIGKILL: it unlinks nothing
        peer.join(TIMEOUT_S)
        gate.send("go")
        ready = wait_ready(handle)
        assert ready.weight_source == "disk" and "exited" in ready.weight_failures[0]
        assert_serves(handle, expected)
    finally:
        handle.send(None)
        process.kill()
        process.join(TIMEOUT_S)
        for conn in (gate, command_writer, report_reader):
            conn.close()
    assert unlink_orphaned_weight_segments() == [Path(manifest.path)]


def test_a_prestarted_worker_becomes_a_serving_instance(
    server_model_dir: Path, expected: list[int], publisher: InstancePool
) -> None:
    pool = PrestartPool(1)
    pool.start()
    handles: list[InstanceHandle] = []
    try:
        pool.wait_idle(TIMEOUT_S)
        (cost,) = pool.costs()
        assert cost.pss_bytes > 0 and cost.idle_cpu_s >= 0
        manifest = manifest_of(publisher)
        handles.append(
            pool.take(spec("new", server_model_dir, weight_source="peer", peer_weights=manifest))
        )
        ready = wait_ready(handles[0])
        assert ready.weight_source == "peer"
        assert ready.start_phases_s["startup_s"] < 1.0  # imported before it was asked
        assert ready.pid == handles[0].process.pid
        assert_serves(handles[0], expected)
        pool.wait_idle(TIMEOUT_S)  # the pool refilled itself
        assert len(pool.costs()) == 1
    finally:
        pool.stop()
        for handle in handles:
            handle.send(None)
            handle.process.kill()
            handle.process.join(TIMEOUT_S)
            handle.commands.close()
            handle.reports.close()
