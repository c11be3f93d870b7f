"""Load a Hugging Face checkpoint folder (config.json + safetensors) into `CausalLM`.

Single-file (`model.safetensors`), sharded (`model.safetensors.index.json`) and plain
multi-file safetensors folders are read. Every parameter the architecture needs must be present
with its exact shape; extras such as `rotary_emb.inv_freq` are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.model import CausalLM

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" to a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unsupported dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")


def load_model(
    path: str | Path, dtype: str | torch.dtype, device: str | torch.device
) -> tuple[ModelConfig, torch.nn.Module]:
    """Read the checkpoint folder `path` and return its config and the model, in eval mode."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    config = ModelConfig.from_file(config_path)
    torch_dtype = parse_dtype(dtype)
    torch_device = torch.device(device)
    files = _weight_files(folder)

    model = empty_model(config, torch_dtype, torch_device)
    expected = dict(model.named_parameters())  # tied weights appear once, by their first name
    loaded: set[str] = set()
    for file in files:
        for name, tensor in _read_tensors(file, expected):
            param = expected[name]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(
                    f"tensor {name!r} in {file} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(tensor)
            loaded.add(name)
    missing = sorted(set(expected) - loaded)
    if missing:
        raise ValueError(
            f"checkpoint {folder} lacks tensor {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; read {', '.join(f.name for f in files)}"
        )
    model.fuse_projections()
    model.eval()
    return config, model


def empty_model(config: ModelConfig, dtype: torch.dtype, device: torch.device) -> CausalLM:
    """The model with its weights allocated but not set (tied, not yet fused): the one skeleton
    every weight source fills, so each yields the same model."""
    model = CausalLM(config, device="meta")  # no random init: every weight is loaded
    model.to(dtype)
    model.to_empty(device=device)
    model.tie_weights()
    model.inv_freq = model.inv_freq.to(device)
    return model


def mapped_model(
    config: ModelConfig, dtype: torch.dtype, tensors: dict[str, torch.Tensor]
) -> CausalLM:
    """The model with `tensors` (by parameter name, of `dtype`, on one device) as its weights,
    without a copy: each parameter is the given tensor, rows fused where they lie back to back
    (see `model._fuse_rows`). A peer's segment mapped read-only becomes the weights this way.
    `tensors` must hold exactly the skeleton's parameters with their shapes."""
    model = CausalLM(config, device="meta")
    model.to(dtype)
    model.tie_weights()
    expected = dict(model.named_parameters())
    if set(expected) != set(tensors):
        missing = sorted(set(expected) - set(tensors))
        raise ValueError(f"tensors for {len(expected)} parameters differ: missing {missing[:3]}")
    device = torch.device("cpu")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape) or tensor.dtype != dtype:
            raise ValueError(f"tensor {name!r} is {tensor.dtype}{list(tensor.shape)}")
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(tensor, requires_grad=False))
        device = tensor.device
    model.tie_weights()
    model.inv_freq = model.inv_freq.to(device)
    model.fuse_projections()
    model.eval()
    return model


def _weight_files(folder: Path) -> list[Path]:
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index_path} is not a valid safetensors index: {exc}") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{index_path} names shard {file.name}, which is missing")
        return files
    single = folder / SAFETENSORS_SINGLE
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"model folder {folder} has no weights: expected {SAFETENSORS_SINGLE}, "
            f"{SAFETENSORS_INDEX} or *.safetensors (other formats are not supported)"
        )
    return files


def _read_tensors(
    file: Path, wanted: dict[str, torch.nn.Parameter]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of `file` the model wants, one at a time so a shard is never held whole.
    Others, such as rotary_emb.inv_freq, are skipped."""
    try:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118 (a reader, not a dict)
                if name in wanted:
                    yield name, reader.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ValueError(f"cannot read safetensors file {file}: {exc}") from exc
