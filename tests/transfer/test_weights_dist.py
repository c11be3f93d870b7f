"""`peer-dist`: a model received from a publishing process over torch.distributed (gloo, on
127.0.0.1) equals the disk-loaded one and generates the same tokens; a corrupt segment, a
publisher killed mid-copy falls back to disk within the timeout."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hyperflexis import LLM, SamplingParams
from hyperflexis.engine.model import CausalLM
from hyperflexis.transfer import weights_dist
from hyperflexis.transfer.instance_weights import InstanceWeights, peer_sources
from hyperflexis.transfer.per_link import NODE_ENV, node_name
from hyperflexis.transfer.weights import (
    DiskSource,
    LoadedWeights,
    PeerSource,
    WeightManifest,
    WeightSourceError,
    load_weights,
    unlink_orphaned_weight_segments,
)
from hyperflexis.transfer.weights_dist import PeerDistSource
from tests.transfer.test_weights import PROMPTS, assert_same_model

PROCESS_TIMEOUT_S = 60.0  # bound on every wait for the publisher process
SHORT_TIMEOUT_S = 2.0  # the reader's bound on each store and group operation, where one fails


@pytest.fixture(scope="module")
def disk_model(server_model_dir: Path) -> CausalLM:
    return load_weights(server_model_dir, "float32", "cpu", [DiskSource()]).model


def publish_and_serve(folder: Path, conn: multiprocessing.connection.Connection) -> None:
    """Publisher process: load from disk, publish and serve, send the manifest, close when told."""
    weights = InstanceWeights("disk", publish=True)
    weights(folder, torch.float32, torch.device("cpu"))
    conn.send(weights.manifest)
    if conn.poll(PROCESS_TIMEOUT_S):
        conn.recv()
    weights.close()
    conn.send("closed")


@dataclass
class Publisher:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    manifest: WeightManifest

    def close(self) -> None:
        """Ask it to stop serving and unlink its segment, then wait for it."""
        self.conn.send("close")
        assert self.conn.poll(PROCESS_TIMEOUT_S) and self.conn.recv() == "closed"
        self.process.join(PROCESS_TIMEOUT_S)
        assert self.process.exitcode == 0


@pytest.fixture
def publisher(server_model_dir: Path) -> Iterator[Publisher]:
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(target=publish_and_serve, args=(server_model_dir, child), daemon=True)
    process.start()
    child.close()
    try:
        assert conn.poll(PROCESS_TIMEOUT_S), "the publisher sent no manifest"
        manifest: WeightManifest = conn.recv()
        yield Publisher(process, conn, manifest)
    finally:
        if process.is_alive():
            os.kill(process.pid or 0, signal.SIGCONT)  # a stopped one cannot be asked to close
        process.kill()
        process.join(PROCESS_TIMEOUT_S)
        conn.close()
        unlink_orphaned_weight_segments()  # a killed publisher cannot unlink its own


def load_dist_first(
    folder: Path, manifest: WeightManifest, timeout_s: float = PROCESS_TIMEOUT_S
) -> LoadedWeights:
    return load_weights(
        folder, "float32", "cpu", [PeerDistSource(manifest, timeout_s), DiskSource()]
    )


def greedy_tokens(folder: Path, model: CausalLM | None) -> list[list[int]]:
    llm = LLM(model=folder)
    if model is not None:
        llm.runner.model = model
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(PROMPTS, greedy)]


@pytest.mark.slow
def test_a_model_received_over_gloo_equals_disk_and_generates_the_same_tokens(
    server_model_dir: Path, disk_model: CausalLM, publisher: Publisher
) -> None:
    manifest = publisher.manifest
    assert manifest.owner_pid == publisher.process.pid and manifest.node == node_name()
    assert manifest.dist_address is not None and manifest.dist_address[0] == "127.0.0.1"
    loaded = load_dist_first(server_model_dir, manifest)
    assert loaded.source == "peer-dist" and loaded.failures == ()
    assert set(loaded.phases_s) == {"recv_s", "verify_s", "build_s"}
    assert_same_model(loaded.model, disk_model)
    again = load_dist_first(server_model_dir, manifest)  # the server serves each reader once
    assert again.source == "peer-dist"
    from_disk = greedy_tokens(server_model_dir, None)
    assert greedy_tokens(server_model_dir, loaded.model) == from_disk
    assert all(len(ids) == 12 for ids in from_disk)
    publisher.close()
    assert not Path(manifest.path).exists()


@pytest.mark.slow
def test_a_corrupt_segment_fails_its_digest_and_falls_back_to_disk(
    server_model_dir: Path, disk_model: CausalLM, publisher: Publisher
) -> None:
    entry = max(publisher.manifest.tensors, key=lambda e: e.num_bytes)
    with open(publisher.manifest.path, "r+b") as segment:  # the bytes the publisher sends
        segment.seek(entry.offset + entry.num_bytes // 2)
        byte = segment.read(1)[0]
        segment.seek(-1, os.SEEK_CUR)
        segment.write(bytes([byte ^ 0x01]))
    loaded = load_dist_first(server_model_dir, publisher.manifest)
    assert loaded.source == "disk"
    assert len(loaded.failures) == 1 and "failed its checksum" in loaded.failures[0]
    assert entry.name in loaded.failures[0]
    assert_same_model(loaded.model, disk_model)
    assert greedy_tokens(server_model_dir, loaded.model) == greedy_tokens(server_model_dir, None)
    publisher.close()


@pytest.mark.slow
def test_a_publisher_killed_mid_copy_falls_back_to_disk(
    server_model_dir: Path,
    disk_model: CausalLM,
    publisher: Publisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_request = weights_dist._request

    def lose_the_publisher_then_ask(*args: object) -> None:
        publisher.process.kill()  # joined, receive posted: the bytes never come
        publisher.process.join(PROCESS_TIMEOUT_S)
        real_request(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(weights_dist, "_request", lose_the_publisher_then_ask)
    start = time.monotonic()
    loaded = load_dist_first(server_model_dir, publisher.manifest, SHORT_TIMEOUT_S)
    assert time.monotonic() - start < PROCESS_TIMEOUT_S / 2
    assert loaded.source == "disk" and loaded.failures[0].startswith("peer-dist: ")
    assert_same_model(loaded.model, disk_model)


def test_peer_dist_maps_a_peer_on_this_node_and_receives_from_one_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(NODE_ENV, "node-a")
    here = WeightManifest("/dev/shm/x", 1, 1, 0, (), node="node-a", dist_address=("127.0.0.1", 1))
    elsewhere = WeightManifest("/dev/shm/x", 1, 1, 0, (), node="node-b")
    kinds = {
        (source, manifest.node): [type(s) for s in peer_sources(source, manifest)]
        for source in ("peer", "peer-dist")
        for manifest in (here, elsewhere)
    }
    assert kinds[("peer-dist", "node-a")] == [PeerSource, DiskSource]
    assert kinds[("peer-dist", "node-b")] == [PeerDistSource, DiskSource]
    assert kinds[("peer", "node-b")] == [PeerSource, DiskSource]  # `peer` is never over gloo
    assert [type(s) for s in peer_sources("disk", here)] == [DiskSource]


def test_a_peer_that_serves_nothing_falls_back_to_disk(
    server_model_dir: Path, disk_model: CausalLM
) -> None:
    manifest = WeightManifest("/dev/shm/x", 1, 1, 0, ())
    loaded = load_weights(server_model_dir, "float32", "cpu", [PeerDistSource(None), DiskSource()])
    assert loaded.source == "disk" and "no peer" in loaded.failures[0]
    assert_same_model(loaded.model, disk_model)
    with pytest.raises(WeightSourceError, match=r"tensors differ|serves no weights"):
        PeerDistSource(manifest).load(server_model_dir, torch.float32, torch.device("cpu"))
