"""Weight sources: a model copied from a peer's segment equals the disk-loaded one and generates
the same tokens; a corrupt, closed, missing or dead peer falls back to disk with the same model."""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from hyperflexis import LLM, SamplingParams
from hyperflexis.engine.model import CausalLM
from hyperflexis.transfer import weights as weights_module
from hyperflexis.transfer.instance_weights import InstanceWeights
from hyperflexis.transfer.weights import (
    WEIGHT_SOURCES,
    DiskSource,
    LoadedWeights,
    PeerSource,
    PublishedWeights,
    WeightManifest,
    WeightSourceError,
    load_weights,
    unlink_orphaned_weight_segments,
)

PROCESS_TIMEOUT_S = 60.0  # bound on every wait for the publisher process
PROMPTS = [[5, 17, 42, 9], [101, 3, 77]]


@pytest.fixture(scope="module")
def disk_model(server_model_dir: Path) -> CausalLM:
    return load_weights(server_model_dir, "float32", "cpu", [DiskSource()]).model


@pytest.fixture
def published(disk_model: CausalLM) -> Iterator[PublishedWeights]:
    weights = PublishedWeights(disk_model)
    yield weights
    weights.close()


def weights_of(model: CausalLM) -> dict[str, torch.Tensor]:
    """Every tensor the forward pass reads: parameters, fused projections and rope frequencies."""
    tensors = {name: p.detach() for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        for attr in ("qkv_weight", "qkv_bias", "gate_up_weight"):
            value = getattr(module, attr, None)
            if isinstance(value, torch.Tensor):
                tensors[f"{name}.{attr}"] = value
    tensors["inv_freq"] = model.inv_freq
    return tensors


def assert_same_model(got: CausalLM, want: CausalLM) -> None:
    got_tensors, want_tensors = weights_of(got), weights_of(want)
    assert got_tensors.keys() == want_tensors.keys()
    for name, tensor in want_tensors.items():
        assert got_tensors[name].dtype == tensor.dtype, name
        assert torch.equal(got_tensors[name], tensor), name
    assert not got.training


def assert_backed_by_the_segment(model: CausalLM) -> None:
    """No copy: every weight, fused matrices included, is a view of one mapped segment."""
    tensors = weights_of(model)
    del tensors["inv_freq"]
    storages = {t.untyped_storage().data_ptr() for t in tensors.values()}
    assert len(storages) == 1
    attention = model.model.layers[0].self_attn
    assert attention.qkv_weight is not None
    assert attention.q_proj.weight.data_ptr() == attention.qkv_weight.data_ptr()


def load_peer_first(folder: Path, manifest: WeightManifest | None) -> LoadedWeights:
    return load_weights(folder, "float32", "cpu", [PeerSource(manifest), DiskSource()])


def test_the_registry_names_both_sources() -> None:
    assert WEIGHT_SOURCES.names() == ["disk", "peer", "peer-dist"]
    assert WEIGHT_SOURCES.get("peer") is PeerSource


def test_a_peer_loaded_model_equals_disk_and_generates_the_same_tokens(
    server_model_dir: Path, disk_model: CausalLM, published: PublishedWeights
) -> None:
    loaded = load_peer_first(server_model_dir, published.manifest)
    assert loaded.source == "peer" and loaded.failures == ()
    assert set(loaded.phases_s) == {"map_s", "verify_s", "build_s"}
    assert all(seconds >= 0 for seconds in loaded.phases_s.values())
    assert_same_model(loaded.model, disk_model)
    assert_backed_by_the_segment(loaded.model)

    llm = LLM(model=server_model_dir)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    from_disk = [out.outputs[0].token_ids for out in llm.generate(PROMPTS, greedy)]
    llm.runner.model = loaded.model
    from_peer = [out.outputs[0].token_ids for out in llm.generate(PROMPTS, greedy)]
    assert from_peer == from_disk and all(len(ids) == 12 for ids in from_disk)


def test_a_flipped_byte_fails_the_checksum_and_falls_back_to_disk(
    server_model_dir: Path, disk_model: CausalLM, published: PublishedWeights
) -> None:
    entry = max(published.manifest.tensors, key=lambda e: e.num_bytes)
    with open(published.manifest.path, "r+b") as segment:
        segment.seek(entry.offset + entry.num_bytes // 2)
        byte = segment.read(1)[0]
        segment.seek(-1, os.SEEK_CUR)
        segment.write(bytes([byte ^ 0x01]))
    loaded = load_peer_first(server_model_dir, published.manifest)
    assert loaded.source == "disk"
    assert len(loaded.failures) == 1 and "failed its checksum" in loaded.failures[0]
    assert entry.name in loaded.failures[0]
    assert_same_model(loaded.model, disk_model)


def test_a_closed_or_missing_peer_falls_back_to_disk(
    server_model_dir: Path, disk_model: CausalLM
) -> None:
    weights = PublishedWeights(disk_model)
    weights.close()
    assert not Path(weights.manifest.path).exists()
    for manifest in (weights.manifest, None):
        loaded = load_peer_first(server_model_dir, manifest)
        assert loaded.source == "disk" and loaded.failures[0].startswith("peer: ")
        assert_same_model(loaded.model, disk_model)


def test_a_layout_mismatch_is_refused(server_model_dir: Path, published: PublishedWeights) -> None:
    manifest = published.manifest
    renamed = dataclasses.replace(manifest.tensors[0], name="not.a.parameter")
    bad = dataclasses.replace(manifest, tensors=(renamed, *manifest.tensors[1:]))
    with pytest.raises(WeightSourceError, match="tensors differ"):
        load_weights(server_model_dir, "float32", "cpu", [PeerSource(bad)])
    past_end = dataclasses.replace(manifest.tensors[0], offset=manifest.num_bytes)
    beyond = dataclasses.replace(manifest, tensors=(past_end, *manifest.tensors[1:]))
    with pytest.raises(WeightSourceError, match="outside the peer's segment"):
        load_weights(server_model_dir, "float32", "cpu", [PeerSource(beyond)])
    with pytest.raises(WeightSourceError, match="expected bfloat16"):
        load_weights(server_model_dir, "bfloat16", "cpu", [PeerSource(manifest)])


def publish_from_disk(folder: Path, conn: multiprocessing.connection.Connection) -> None:
    """Publisher process: load from disk, publish, send the manifest, close when told to."""
    model = load_weights(folder, "float32", "cpu", [DiskSource()]).model
    weights = PublishedWeights(model)
    conn.send(weights.manifest)
    if conn.poll(PROCESS_TIMEOUT_S):
        conn.recv()
    weights.close()
    conn.send("closed")


@pytest.mark.slow
def test_loads_from_another_process_and_falls_back_when_it_dies_mid_copy(
    server_model_dir: Path, disk_model: CausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    process = context.Process(target=publish_from_disk, args=(server_model_dir, child), daemon=True)
    process.start()
    child.close()
    try:
        assert conn.poll(PROCESS_TIMEOUT_S), "the publisher sent no manifest"
        manifest: WeightManifest = conn.recv()
        assert manifest.owner_pid == process.pid
        loaded = load_peer_first(server_model_dir, manifest)
        assert loaded.source == "peer"
        assert_same_model(loaded.model, disk_model)

        real_verify = weights_module._verify_digests

        def verify_then_lose_the_publisher(*args: Any) -> None:
            real_verify(*args)
            process.kill()  # the publisher dies while its bytes are being read
            process.join(PROCESS_TIMEOUT_S)

        monkeypatch.setattr(weights_module, "_verify_digests", verify_then_lose_the_publisher)
        loaded = load_peer_first(server_model_dir, manifest)
        assert loaded.source == "disk" and "exited" in loaded.failures[0]
        assert_same_model(loaded.model, disk_model)
        monkeypatch.undo()

        assert Path(manifest.path).exists()  # a killed publisher cannot unlink
        loaded = load_peer_first(server_model_dir, manifest)
        assert loaded.source == "disk" and "exited" in loaded.failures[0]
        assert_same_model(loaded.model, disk_model)
    finally:
        process.kill()
        process.join(PROCESS_TIMEOUT_S)
        conn.close()
    assert unlink_orphaned_weight_segments() == [Path(manifest.path)]


def test_an_instance_loader_names_its_source_and_publishes_what_it_runs_on(
    server_model_dir: Path, disk_model: CausalLM
) -> None:
    with pytest.raises(ValueError, match="unknown weight source 'nfs'"):
        InstanceWeights("nfs")
    publisher = InstanceWeights("disk", publish=True)
    try:
        _, model = publisher(server_model_dir, torch.float32, torch.device("cpu"))
        assert isinstance(model, CausalLM) and publisher.manifest is not None
        assert publisher.loaded is not None and publisher.loaded.source == "disk"
        assert_same_model(model, disk_model)
        assert_backed_by_the_segment(model)  # it runs on its own segment
        reader = InstanceWeights("peer", publisher.manifest)
        _, mapped = reader(server_model_dir, torch.float32, torch.device("cpu"))
        assert isinstance(mapped, CausalLM)
        assert reader.loaded is not None and reader.loaded.source == "peer"
        assert_same_model(mapped, disk_model)
    finally:
        publisher.close()
    assert not Path(publisher.manifest.path).exists()
