"""A replay of PyTorch's CUDA caching allocator: turns a sequence of allocations and frees into reserved bytes.

Pure Python (no torch). It mirrors the documented default behaviour of `CUDACachingAllocator`
(c10/cuda/CUDACachingAllocator.cpp, PyTorch 2.x; https://pytorch.org/docs/stable/notes/cuda.html#memory-management):

- `round_size`: requests are rounded up to a multiple of 512 bytes (kMinBlockSize), at least 512.
- Requests of at most 1 MiB (kSmallSize) come from the small pool, larger ones from the large pool.
- A miss allocates a new segment (`get_allocation_size`): 2 MiB (kSmallBuffer) for small requests,
  20 MiB (kLargeBuffer) for requests under 10 MiB (kMinLargeAlloc), else the request rounded up to 2 MiB (kRoundLarge).
- `get_free_block` takes the best fit: the smallest free block of the pool that is large enough (then lowest address).
- `should_split`: a small-pool block is split if ≥ 512 bytes would remain, a large-pool block if > 1 MiB would remain.
- A freed block merges with free neighbours of the same segment (`try_merge_blocks`).
- Segments are never returned to the driver (no `empty_cache`, no OOM retry), one stream, no
  `max_split_size_mb`, no `expandable_segments`, no garbage-collection threshold: the defaults.
Not modelled: cross-stream reuse delays (record_stream), NCCL's own buffers, CUDA graphs' private pools.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: largest "small" request
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segment size
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segment for large requests under kMinLargeAlloc
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
ROUND_LARGE = 2 << 20  # kRoundLarge


def round_size(size: int) -> int:
    return MIN_BLOCK if size < MIN_BLOCK else MIN_BLOCK * -(-size // MIN_BLOCK)


def allocation_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * -(-size // ROUND_LARGE)


@dataclass
class _Block:
    addr: int
    size: int
    small: bool
    free: bool = True
    prev: _Block | None = None
    next: _Block | None = None


@dataclass(frozen=True)
class ReplayResult:
    allocated_peak: int  # peak of rounded requested bytes (torch.cuda.max_memory_allocated)
    reserved_peak: int  # peak of segment bytes (torch.cuda.max_memory_reserved)
    segments: int


class CachingAllocator:
    def __init__(self) -> None:
        self._pools: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}  # (size, addr, id) sorted
        self._blocks: dict[int, _Block] = {}  # id(block) -> block, for free blocks in pools
        self._by_handle: dict[int, _Block] = {}
        self._next_addr = 0
        self.allocated = self.reserved = 0
        self.allocated_peak = self.reserved_peak = 0
        self.segments = 0

    def _insert(self, b: _Block) -> None:
        bisect.insort(self._pools[b.small], (b.size, b.addr, id(b)))
        self._blocks[id(b)] = b

    def _remove(self, b: _Block) -> None:
        pool = self._pools[b.small]
        i = bisect.bisect_left(pool, (b.size, b.addr, id(b)))
        del pool[i]
        del self._blocks[id(b)]

    def malloc(self, handle: int, nbytes: int) -> None:
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1, -1))
        if i < len(pool):
            block = self._blocks[pool[i][2]]
            self._remove(block)
        else:
            seg = allocation_size(size)
            block = _Block(self._next_addr, seg, small)
            self._next_addr += seg
            self.reserved += seg
            self.segments += 1
            self.reserved_peak = max(self.reserved_peak, self.reserved)
        remaining = block.size - size
        if (small and remaining >= MIN_BLOCK) or (not small and remaining > SMALL_SIZE):
            rest = _Block(block.addr + size, remaining, small, True, block, block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            self._insert(rest)
        block.free = False
        self._by_handle[handle] = block
        self.allocated += block.size
        self.allocated_peak = max(self.allocated_peak, self.allocated)

    def free(self, handle: int) -> None:
        block = self._by_handle.pop(handle, None)
        if block is None:
            return
        self.allocated -= block.size
        block.free = True
        for nb in (block.prev, block.next):
            if nb is not None and nb.free:
                self._remove(nb)
                if nb is block.prev:
                    block.addr, block.prev = nb.addr, nb.prev
                    if nb.prev is not None:
                        nb.prev.next = block
                else:
                    block.next = nb.next
                    if nb.next is not None:
                        nb.next.prev = block
                block.size += nb.size
        self._insert(block)


def replay(events: Iterable[tuple[int, int]]) -> ReplayResult:
    """events: (handle, nbytes) for an allocation, (-handle, 0) for its free."""
    a = CachingAllocator()
    for handle, nbytes in events:
        if handle > 0:
            a.malloc(handle, nbytes)
        else:
            a.free(-handle)
    return ReplayResult(a.allocated_peak, a.reserved_peak, a.segments)
