"""A model mapped from a peer's segment, for each architecture (GQA llama, qwen2 with q/k/v bias
and tied embeddings, mistral): bit for bit the disk-loaded model, with every weight, fused
matrices and biases included, a view of the segment (no copy)."""

from __future__ import annotations

import pytest
import torch

from hyperflexis.engine.model import MLP, Attention, CausalLM
from hyperflexis.transfer.weights import DiskSource, PeerSource, PublishedWeights, load_weights
from tests.engine.checkpoints import Checkpoint


def fused_tensors(model: CausalLM) -> dict[str, torch.Tensor]:
    tensors = {name: p.detach() for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            assert module.qkv_weight is not None
            tensors[f"{name}.qkv_weight"] = module.qkv_weight
            if module.qkv_bias is not None:
                tensors[f"{name}.qkv_bias"] = module.qkv_bias
        if isinstance(module, MLP):
            assert module.gate_up_weight is not None
            tensors[f"{name}.gate_up_weight"] = module.gate_up_weight
    return tensors


@pytest.mark.parametrize("name", ["llama", "qwen2", "mistral"])
def test_a_mapped_model_is_the_disk_model_with_no_copy(
    hf_checkpoints: dict[str, Checkpoint], name: str
) -> None:
    folder = hf_checkpoints[name].path
    disk = load_weights(folder, "float32", "cpu", [DiskSource()]).model
    published = PublishedWeights(disk)
    try:
        mapped = load_weights(folder, "float32", "cpu", [PeerSource(published.manifest)]).model
    finally:
        published.close()  # the mapping outlives the file's name
    want, got = fused_tensors(disk), fused_tensors(mapped)
    assert want.keys() == got.keys()
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key
    storages = {t.untyped_storage().data_ptr() for t in got.values()}
    assert len(storages) == 1, "every weight lies in the one mapped segment"
    if name == "qwen2":
        assert mapped.lm_head.weight is mapped.model.embed_tokens.weight
        assert any(key.endswith("qkv_bias") for key in got)
