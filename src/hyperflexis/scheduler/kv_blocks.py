"""Paged KV block accounting: which blocks each request owns. Pure Python, no tensors; the engine
owns the cache tensors and only reads the block tables this hands out."""

from __future__ import annotations

from collections import deque


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    """KV blocks that hold `num_tokens` tokens: the last block may be part full."""
    return -(-num_tokens // block_size)


class KVBlockManager:
    """Fixed-size KV blocks and a block table per request.

    Free blocks sit in a FIFO so a freed block is reused last, which keeps freshly freed memory
    untouched for a while and makes use-after-free bugs visible in tests rather than silent.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[str, list[int]] = {}
        # Blocks kept after their request ended (a prefill's KV under lease for a decode peer),
        # by request id, apart from the live tables so the id may be used again meanwhile.
        self._pinned: dict[str, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return num_blocks_for(num_tokens, self.block_size)

    def num_blocks_needed(self, request_id: str, num_tokens: int) -> int:
        """Blocks to add so `request_id` holds `num_tokens` tokens."""
        table = self._tables.get(request_id)
        held = len(table) if table is not None else 0
        return max(0, num_blocks_for(num_tokens, self.block_size) - held)

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    def allocate(self, request_id: str, num_tokens: int) -> list[int]:
        """Grow the request's table to hold `num_tokens`; returns the table. Raises when short."""
        table = self._tables.setdefault(request_id, [])
        need = num_blocks_for(num_tokens, self.block_size) - len(table)
        if need > len(self._free):
            raise RuntimeError(
                f"KV cache exhausted: {request_id} needs {need} blocks, {len(self._free)} free"
            )
        for _ in range(need):
            table.append(self._free.popleft())
        return table

    def free(self, request_id: str) -> int:
        """Return a request's blocks to the pool; returns how many. Unknown ids free nothing."""
        table = self._tables.pop(request_id, None)
        if table is None:
            return 0
        self._free.extend(table)
        return len(table)

    def pin(self, request_id: str, key: str | None = None) -> list[int]:
        """Keep a request's blocks after it ends: they leave its table (so `free` no longer
        returns them) and stay under `key` (default: the request id) until `unpin(key)`.
        Returns them."""
        key = request_id if key is None else key
        if key in self._pinned:
            raise RuntimeError(f"{key}: blocks already pinned")
        table = self._tables.pop(request_id, [])
        self._pinned[key] = table
        return table

    def unpin(self, key: str) -> int:
        """Return pinned blocks to the pool; returns how many (0: none pinned under `key`)."""
        table = self._pinned.pop(key, None)
        if table is None:
            return 0
        self._free.extend(table)
        return len(table)

    def pinned(self) -> list[str]:
        return list(self._pinned)

    def block_table(self, request_id: str) -> list[int]:
        return self._tables.get(request_id, [])

    def owners(self) -> list[str]:
        return list(self._tables)
