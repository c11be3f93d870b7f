"""Attention over a ragged batch read from, and written to, the paged KV cache.

A step mixes prefill chunks of several requests with single-token decodes. Everything that
depends only on the batch's shape (the flat token layout, cache slots, gather indices and masks)
is computed once per step in `StepBatch.build`; each layer then does

- one `index_copy_` per K and V to store the new tokens,
- one padded SDPA call for all single-token chunks together (a key-padding mask hides the
  padding), with the query heads that share a KV head folded into the query-row axis so grouped
  keys are never repeated; their context is gathered whole blocks at a time with one
  `index_select` (block-granular copies are several times faster than per-slot indexing).
  When context lengths differ so much that padding would more than double the work, the decodes
  are split into a few groups of similar length, one SDPA call each,
- one SDPA call per longer chunk: plain causal attention on the chunk's own keys when it starts
  at position 0, otherwise over its cached prefix plus itself with an explicit causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hyperflexis.engine.kv_cache import KVCache
from hyperflexis.scheduler.kv_blocks import num_blocks_for
from hyperflexis.scheduler.output import ScheduledChunk


@dataclass(slots=True)
class PrefillSpan:
    """One chunk of more than one token, and how it attends."""

    token_start: int  # first row of the chunk in the flat token batch
    token_end: int  # one past its last row
    context_blocks: torch.Tensor | None  # blocks holding positions 0 .. start_pos+n-1; None:
    # the chunk starts at 0 and attends to its own new K/V only
    context_len: int  # start_pos + n
    mask: torch.Tensor | None  # [n, start_pos + n] additive (0 or -inf); None: plain causal


@dataclass(slots=True)
class DecodeGroup:
    """Single-token chunks attended together in one padded SDPA call."""

    rows: torch.Tensor | None  # [n] their rows in the flat batch; None: every row, in order
    blocks: torch.Tensor  # [n * max_blocks] their block tables, zero padded, flattened
    mask: torch.Tensor  # [n, 1, 1, max_blocks * block_size] additive: 0 inside the context,
    # -inf on padding (precomputed: SDPA would convert a bool mask in every layer)


@dataclass(slots=True)
class StepBatch:
    """The device tensors one step needs, built once and shared by every layer."""

    input_ids: torch.Tensor  # [num_tokens] all chunks' tokens, concatenated in batch order
    positions: torch.Tensor  # [num_tokens] position of each token in its request
    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot each new token's K/V goes to
    decode_groups: list[DecodeGroup]  # the single-token chunks
    prefills: list[PrefillSpan]  # the longer chunks
    sample_rows: torch.Tensor  # [num_sampled] last row of every chunk that samples
    sample_chunks: list[ScheduledChunk]  # the chunks that sample, in the order of sample_rows

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def build(
        cls,
        chunks: list[ScheduledChunk],
        block_size: int,
        device: torch.device,
        max_model_len: int,
        vocab_size: int,
        dtype: torch.dtype,
        num_blocks: int,
    ) -> StepBatch:
        """Lay out `chunks` (validated against the model and the cache: a bad index would
        otherwise fail deep inside a kernel, or assert on the GPU) for one step."""
        if not chunks:
            raise ValueError("a step needs at least one chunk")
        input_ids: list[int] = []
        positions: list[torch.Tensor] = []
        slots: list[torch.Tensor] = []
        # Runs of single-token chunks collect here and become one tensor each.
        run_positions: list[int] = []
        run_slots: list[int] = []
        prefills: list[PrefillSpan] = []
        decode_rows: list[int] = []
        decode_lens: list[int] = []
        decode_tables: list[list[int]] = []
        sample_rows: list[int] = []
        sample_chunks: list[ScheduledChunk] = []
        for chunk in chunks:
            _check_chunk(chunk, block_size, max_model_len, vocab_size, num_blocks)
            row = len(input_ids)
            num_new = len(chunk.token_ids)
            end_pos = chunk.start_pos + num_new
            input_ids.extend(chunk.token_ids)
            if chunk.sample:
                sample_rows.append(row + num_new - 1)
                sample_chunks.append(chunk)
            if num_new == 1:
                decode_rows.append(row)
                decode_lens.append(end_pos)
                decode_tables.append(chunk.block_ids)
                run_positions.append(chunk.start_pos)
                run_slots.append(_slot(chunk.block_ids, chunk.start_pos, block_size))
                continue
            if run_positions:
                positions.append(torch.tensor(run_positions))
                slots.append(torch.tensor(run_slots))
                run_positions, run_slots = [], []
            table = torch.tensor(chunk.block_ids[: num_blocks_for(end_pos, block_size)])
            new_pos = torch.arange(chunk.start_pos, end_pos)
            positions.append(new_pos)
            slots.append(table[new_pos // block_size] * block_size + new_pos % block_size)
            if chunk.start_pos == 0:
                prefills.append(PrefillSpan(row, row + num_new, None, end_pos, None))
            else:
                allowed = torch.arange(end_pos)[None, :] <= new_pos[:, None]
                mask = _additive(allowed, dtype).to(device)
                prefills.append(PrefillSpan(row, row + num_new, table.to(device), end_pos, mask))
        if run_positions:
            positions.append(torch.tensor(run_positions))
            slots.append(torch.tensor(run_slots))
        every_row_decodes = len(decode_rows) == len(input_ids)
        groups = group_decodes(decode_rows, decode_lens, block_size)
        decode_groups = [
            _decode_group(
                None if every_row_decodes and len(groups) == 1 else group_rows,
                [decode_tables[i] for i in members],
                [decode_lens[i] for i in members],
                block_size,
                dtype,
                device,
            )
            for members, group_rows in groups
        ]
        return cls(
            input_ids=torch.tensor(input_ids, device=device),
            positions=torch.cat(positions).to(device),
            slot_mapping=torch.cat(slots).to(device),
            decode_groups=decode_groups,
            prefills=prefills,
            sample_rows=torch.tensor(sample_rows, dtype=torch.long, device=device),
            sample_chunks=sample_chunks,
        )


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: KVCache,
    layer: int,
    batch: StepBatch,
) -> torch.Tensor:
    """Attention for every row of the batch.

    `query` is [num_tokens, num_heads, head_dim]; `key`/`value` are this step's new
    [num_tokens, num_kv_heads, head_dim], already written to `kv_cache` at `layer`.
    Returns [num_tokens, num_heads, head_dim].
    """
    group = query.shape[1] // key.shape[1]
    if len(batch.decode_groups) == 1 and batch.decode_groups[0].rows is None:
        return _decode_attention(query, kv_cache, layer, batch.decode_groups[0], group)
    out = torch.empty_like(query)
    for decodes in batch.decode_groups:
        assert decodes.rows is not None
        rows = decodes.rows
        out[rows] = _decode_attention(query[rows], kv_cache, layer, decodes, group)
    for span in batch.prefills:
        q = query[span.token_start : span.token_end].transpose(0, 1).unsqueeze(0)
        if span.context_blocks is None:
            k = key[span.token_start : span.token_end]
            v = value[span.token_start : span.token_end]
        else:
            k, v = kv_cache.gather(layer, span.context_blocks)
            k, v = k[: span.context_len], v[: span.context_len]
        attn = F.scaled_dot_product_attention(
            q,
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            attn_mask=span.mask,
            is_causal=span.mask is None,
            enable_gqa=group > 1,
        )
        out[span.token_start : span.token_end] = attn[0].transpose(0, 1)
    return out


def _decode_attention(
    query: torch.Tensor, kv_cache: KVCache, layer: int, decodes: DecodeGroup, group: int
) -> torch.Tensor:
    num_decodes, num_heads, head_dim = query.shape
    num_kv_heads = num_heads // group
    # Query heads kv*group .. kv*group+group-1 share KV head kv: fold them into query rows.
    q = query.view(num_decodes, num_kv_heads, group, head_dim)
    shape = (num_decodes, -1, num_kv_heads, head_dim)
    keys, values = kv_cache.gather(layer, decodes.blocks)
    k = keys.view(shape).transpose(1, 2)  # [D, kv_heads, max_blocks * block_size, head_dim]
    v = values.view(shape).transpose(1, 2)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=decodes.mask)
    return attn.reshape(num_decodes, num_heads, head_dim)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))


def _slot(block_ids: list[int], pos: int, block_size: int) -> int:
    return block_ids[pos // block_size] * block_size + pos % block_size


MAX_DECODE_GROUPS = 4  # each group costs a few kernel launches per layer
PADDING_SLACK = 2.0  # a group's padded size may reach this multiple of its real context


def group_decodes(
    rows: list[int], lens: list[int], block_size: int
) -> list[tuple[list[int], list[int]]]:
    """Split decodes into groups of similar context length: (member indices, their rows).

    One group while padding to the longest context at most doubles the blocks gathered;
    otherwise, in order of length, a new group starts where the longest context exceeds
    PADDING_SLACK times the group's shortest, up to MAX_DECODE_GROUPS groups."""
    if not rows:
        return []
    blocks = [num_blocks_for(n, block_size) for n in lens]
    if max(blocks) * len(blocks) <= PADDING_SLACK * sum(blocks):
        return [(list(range(len(rows))), rows)]
    order = sorted(range(len(rows)), key=blocks.__getitem__)
    groups: list[list[int]] = [[order[0]]]
    for i in order[1:]:
        first = blocks[groups[-1][0]]
        if blocks[i] > PADDING_SLACK * first and len(groups) < MAX_DECODE_GROUPS:
            groups.append([i])
        else:
            groups[-1].append(i)
    return [(members, [rows[i] for i in members]) for members in groups]


def _decode_group(
    rows: list[int] | None,
    tables: list[list[int]],
    lens: list[int],
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> DecodeGroup:
    num_table_blocks = num_blocks_for(max(lens), block_size)
    padded = [t[:num_table_blocks] + [0] * max(0, num_table_blocks - len(t)) for t in tables]
    pos = torch.arange(num_table_blocks * block_size)
    allowed = pos[None, :] < torch.tensor(lens)[:, None]
    return DecodeGroup(
        rows=None if rows is None else torch.tensor(rows, device=device),
        blocks=torch.tensor(padded).flatten().to(device),
        mask=_additive(allowed[:, None, None, :], dtype).to(device),
    )


def _check_chunk(
    chunk: ScheduledChunk, block_size: int, max_model_len: int, vocab_size: int, num_blocks: int
) -> None:
    end_pos = chunk.start_pos + len(chunk.token_ids)
    if not chunk.token_ids:
        raise ValueError(f"chunk of {chunk.request_id} has no token_ids")
    if chunk.start_pos < 0:
        raise ValueError(f"chunk of {chunk.request_id} has start_pos {chunk.start_pos} < 0")
    if end_pos > max_model_len:
        raise ValueError(
            f"request {chunk.request_id} reaches {end_pos} tokens, over max_model_len "
            f"{max_model_len}"
        )
    if len(chunk.block_ids) * block_size < end_pos:
        raise ValueError(
            f"request {chunk.request_id} has {len(chunk.block_ids)} KV blocks of {block_size} "
            f"slots, too few for {end_pos} tokens"
        )
    used = chunk.block_ids[: num_blocks_for(end_pos, block_size)]
    if min(used) < 0 or max(used) >= num_blocks:
        raise ValueError(
            f"request {chunk.request_id} has a KV block id outside the cache [0, {num_blocks})"
        )
    if min(chunk.token_ids) < 0 or max(chunk.token_ids) >= vocab_size:
        raise ValueError(
            f"request {chunk.request_id} has a token id outside the vocabulary [0, {vocab_size})"
        )
