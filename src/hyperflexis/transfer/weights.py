"""Weight sources (DESIGN.md §7, §10.2): where a new instance's weights come from, in one registry
(`WEIGHT_SOURCES`). `disk` reads safetensors through the engine's loader; `peer` takes them from a
running instance on this host, which published them once into a /dev/shm segment with a manifest of
names, shapes, dtypes, offsets and per-tensor xxh3 digests. `load_weights` tries the sources in
order and falls back on any failure, so a corrupt, missing or dead peer costs time, never a wrong
model.

Both sources yield the same model: disk fills the loader's skeleton (`loader.empty_model`) and
fuses it; the peer's segment, mapped read-only, becomes the weights (`loader.mapped_model`): each
parameter is a view of it, and since the publisher lays each fused group (q/k/v, gate/up) back to
back, the fused matrices are views too. No byte is copied and no page is first-touched: the one
pass over the bytes is the checksum, which the new instance needs anyway.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from hyperflexis.core.registry import Registry
from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.loader import load_model, mapped_model, parse_dtype
from hyperflexis.engine.model import CausalLM
from hyperflexis.transfer.base import process_alive
from hyperflexis.transfer.checksums import digest, span_digests
from hyperflexis.transfer.shm import SHM_DIR, tensor_over, unlink_orphaned_segments

logger = logging.getLogger(__name__)

WEIGHT_SEGMENT_PREFIX = "hyperflexis-weights-"  # then "<owner pid>-<random hex>"
ALIGN_BYTES = 64  # each tensor starts on a cache line


class WeightSourceError(RuntimeError):
    """A source could not provide the weights; `load_weights` moves on to the next one."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One parameter in a published segment."""

    name: str  # the model's parameter name (Hugging Face naming)
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "bfloat16"
    offset: int  # bytes from the start of the segment
    num_bytes: int
    digest: int  # xxh3-64 of its bytes, computed once when published


@dataclass(frozen=True, slots=True)
class WeightManifest:
    """What a new instance needs to find and check a peer's weights; small and picklable."""

    path: str  # the segment file
    inode: int  # tells a recreated file of the same name from the published one
    owner_pid: int
    num_bytes: int  # the segment's size
    tensors: tuple[TensorEntry, ...]
    node: str = ""  # the publisher's node (`per_link.node_name`); "" before it serves
    # Where it serves the segment over torch.distributed (`peer-dist`, weights_dist.py); None: not.
    dist_address: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class LoadedWeights:
    """A loaded model and how it was obtained."""

    config: ModelConfig
    model: CausalLM
    source: str  # the name of the source that provided it
    phases_s: dict[str, float]  # seconds per phase of that source, e.g. {"copy_s": 0.1}
    failures: tuple[str, ...] = field(default=())  # "source: reason" of each source tried first


class WeightSource(ABC):
    """Provides a checkpoint folder's model; raises WeightSourceError when it cannot."""

    name: ClassVar[str]

    @abstractmethod
    def load(
        self, folder: Path, dtype: torch.dtype, device: torch.device
    ) -> tuple[ModelConfig, CausalLM, dict[str, float]]:
        """The config, the model in eval mode, and seconds per phase."""


WEIGHT_SOURCES: Registry[type[WeightSource]] = Registry("weight source")


@WEIGHT_SOURCES.register
class DiskSource(WeightSource):
    """Safetensors through the engine's loader."""

    name = "disk"

    def load(
        self, folder: Path, dtype: torch.dtype, device: torch.device
    ) -> tuple[ModelConfig, CausalLM, dict[str, float]]:
        start = time.perf_counter()
        config, model = load_model(folder, dtype, device)
        assert isinstance(model, CausalLM)
        return config, model, {"read_s": time.perf_counter() - start}


@WEIGHT_SOURCES.register
class PeerSource(WeightSource):
    """A running peer's published segment (`manifest`; None when no peer published one).

    On the CPU the segment's pages become the weights: it is mapped read-only and each parameter
    is a view of it, so the load is one pass over the bytes (the checksum, which also faults the
    pages in) and the host holds one copy of the weights however many instances map it. On
    another device the views are copied there. The mapping outlives the peer: a peer that exits
    after the load takes nothing away; one gone before the check ends fails the load."""

    name = "peer"

    def __init__(self, manifest: WeightManifest | None) -> None:
        self.manifest = manifest

    def load(
        self, folder: Path, dtype: torch.dtype, device: torch.device
    ) -> tuple[ModelConfig, CausalLM, dict[str, float]]:
        manifest = self.manifest
        if manifest is None:
            raise WeightSourceError("no peer has published its weights")
        phases: dict[str, float] = {}
        start = time.perf_counter()
        config = checked_config(folder, dtype, manifest)
        segment = tensor_over(_map_segment(manifest))  # the views keep the mapping alive
        phases["map_s"] = time.perf_counter() - start
        start = time.perf_counter()
        _verify_digests(manifest, segment)
        _check_owner(manifest)  # a publisher gone mid-check leaves bytes not to be trusted
        phases["verify_s"] = time.perf_counter() - start
        return config, model_over(config, dtype, device, manifest, segment, phases), phases


def checked_config(folder: Path, dtype: torch.dtype, manifest: WeightManifest) -> ModelConfig:
    """The folder's config, once the manifest's names, shapes and dtypes match its model's."""
    config = ModelConfig.from_file(folder / "config.json")
    skeleton = CausalLM(config, device="meta").to(dtype)  # shapes only, no memory
    skeleton.tie_weights()
    _check_layout(manifest, dict(skeleton.named_parameters()))
    return config


def model_over(
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    manifest: WeightManifest,
    segment: torch.Tensor,
    phases: dict[str, float],
) -> CausalLM:
    """The model whose weights are views of `segment` (verified, laid out as `manifest` says),
    copied to `device` when it is not the CPU; adds "copy_s" and "build_s" to `phases`."""
    views = _segment_views(segment, manifest)
    start = time.perf_counter()
    if device.type != "cpu":
        views = {name: view.to(device) for name, view in views.items()}
        phases["copy_s"] = time.perf_counter() - start
        start = time.perf_counter()
    model = mapped_model(config, dtype, views)
    phases["build_s"] = time.perf_counter() - start
    return model


class PublishedWeights:
    """A model's parameters copied into one /dev/shm segment; the owner unlinks it on `close`
    (or when this object is collected, or the process exits)."""

    def __init__(self, model: torch.nn.Module, directory: Path = SHM_DIR) -> None:
        params = _publish_order([(name, p.detach()) for name, p in model.named_parameters()])
        layout, num_bytes = _layout(params)
        path = directory / f"{WEIGHT_SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        self._finalizer = weakref.finalize(self, path.unlink, missing_ok=True)
        try:
            os.ftruncate(fd, max(num_bytes, 1))
            memory = mmap.mmap(fd, max(num_bytes, 1))
            inode = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        try:
            digests = _write_segment(memory, params, layout)
        finally:
            memory.close()
        entries = tuple(
            TensorEntry(name, tuple(t.shape), _dtype_name(t.dtype), off, size, digest)
            for (name, t), (off, size), digest in zip(params, layout, digests, strict=True)
        )
        self.manifest = WeightManifest(str(path), inode, os.getpid(), num_bytes, entries)

    def close(self) -> None:
        self._finalizer()


def load_weights(
    folder: str | Path,
    dtype: str | torch.dtype,
    device: str | torch.device,
    sources: Sequence[WeightSource],
) -> LoadedWeights:
    """The model from the first source in `sources` that provides it; the last source's error
    propagates when none does. Logs which source served and each phase's time."""
    if not sources:
        raise ValueError("load_weights needs at least one source")
    torch_dtype, torch_device = parse_dtype(dtype), torch.device(device)
    failures: list[str] = []
    for index, source in enumerate(sources):
        try:
            config, model, phases = source.load(Path(folder), torch_dtype, torch_device)
        except WeightSourceError as exc:
            if index == len(sources) - 1:
                raise
            logger.warning(
                "weights from %s failed (%s); trying %s", source.name, exc, sources[index + 1].name
            )
            failures.append(f"{source.name}: {exc}")
            continue
        timings = ", ".join(f"{phase} {seconds:.3f}" for phase, seconds in phases.items())
        logger.info("weights from %s (%s)", source.name, timings)
        return LoadedWeights(config, model, source.name, phases, tuple(failures))
    raise AssertionError("unreachable: the last source returns or raises")


def unlink_orphaned_weight_segments(directory: Path = SHM_DIR) -> list[Path]:
    """Remove the weight segments of publishers that no longer run; returns what was removed."""
    return unlink_orphaned_segments(directory, WEIGHT_SEGMENT_PREFIX)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _layout(params: list[tuple[str, torch.Tensor]]) -> tuple[list[tuple[int, int]], int]:
    """(offset, num_bytes) per tensor, each aligned, and the segment's total size."""
    layout, offset = [], 0
    for _, tensor in params:
        size = tensor.numel() * tensor.element_size()
        layout.append((offset, size))
        offset += -(-size // ALIGN_BYTES) * ALIGN_BYTES
    return layout, offset


def _write_segment(
    memory: mmap.mmap, params: list[tuple[str, torch.Tensor]], layout: list[tuple[int, int]]
) -> list[int]:
    """Copy each tensor to its place; returns their digests. No view outlives the call, so the
    caller can close the mapping."""
    base = tensor_over(memory)
    views = []
    for (_, tensor), (offset, size) in zip(params, layout, strict=True):
        view = base[offset : offset + size].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor)
        views.append(view)
    return [digest(view) for view in views]


def _publish_order(params: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """Parameters grouped by their module's parent, weights before biases, so each fused
    group (q/k/v, gate/up) lies back to back in the segment and maps as one view."""
    first_seen: dict[str, int] = {}
    for index, (name, _) in enumerate(params):
        first_seen.setdefault(name.rsplit(".", 2)[0], index)

    def key(item: tuple[int, tuple[str, torch.Tensor]]) -> tuple[int, bool, int]:
        index, (name, _) = item
        return first_seen[name.rsplit(".", 2)[0]], name.endswith(".bias"), index

    return [param for _, param in sorted(enumerate(params), key=key)]


def _check_owner(manifest: WeightManifest) -> None:
    try:
        inode = os.stat(manifest.path).st_ino
    except FileNotFoundError:
        inode = None
    if inode != manifest.inode:
        raise WeightSourceError(f"the peer's segment {manifest.path} was removed or replaced")
    if not process_alive(manifest.owner_pid):
        raise WeightSourceError(
            f"the peer publishing {manifest.path} (pid {manifest.owner_pid}) exited"
        )


def _map_segment(manifest: WeightManifest) -> mmap.mmap:
    _check_owner(manifest)
    try:
        fd = os.open(manifest.path, os.O_RDONLY)
    except FileNotFoundError:
        raise WeightSourceError(f"the peer's segment {manifest.path} is gone") from None
    try:
        if os.fstat(fd).st_ino != manifest.inode:
            raise WeightSourceError(f"the peer's segment {manifest.path} was replaced")
        return mmap.mmap(fd, max(manifest.num_bytes, 1), prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def _check_layout(manifest: WeightManifest, params: dict[str, torch.nn.Parameter]) -> None:
    published = {entry.name: entry for entry in manifest.tensors}
    if set(published) != set(params):
        missing = sorted(set(params) - set(published))
        extra = sorted(set(published) - set(params))
        raise WeightSourceError(
            f"the peer's tensors differ: missing {missing[:3]}, extra {extra[:3]}"
        )
    for name, param in params.items():
        entry = published[name]
        if entry.shape != tuple(param.shape) or entry.dtype != _dtype_name(param.dtype):
            raise WeightSourceError(
                f"peer tensor {name!r} is {entry.dtype}{list(entry.shape)}, "
                f"expected {_dtype_name(param.dtype)}{list(param.shape)}"
            )
        size = param.numel() * param.element_size()
        if entry.num_bytes != size or not 0 <= entry.offset <= manifest.num_bytes - size:
            raise WeightSourceError(f"peer tensor {name!r} lies outside the peer's segment")


def _segment_views(segment: torch.Tensor, manifest: WeightManifest) -> dict[str, torch.Tensor]:
    """Each published tensor as a view of the mapped segment."""
    return {
        entry.name: segment[entry.offset : entry.offset + entry.num_bytes]
        .view(parse_dtype(entry.dtype))
        .view(entry.shape)
        for entry in manifest.tensors
    }


def _verify_digests(manifest: WeightManifest, segment: torch.Tensor) -> None:
    """The segment's bytes against the digests the peer computed when it published."""
    spans = [(entry.offset, entry.num_bytes) for entry in manifest.tensors]
    for entry, found in zip(manifest.tensors, span_digests(segment, spans), strict=True):
        if found != entry.digest:
            raise WeightSourceError(f"peer tensor {entry.name!r} failed its checksum")
