"""A dispatch-level tracker of live storages: every new storage an op returns is an allocation, and a
`weakref.finalize` on the storage's Python object (PyTorch preserves it as long as the storage lives) is its free.

Sizes are rounded like the CUDA caching allocator rounds requests (512-byte blocks, `kMinBlockSize` in
c10/cuda/CUDACachingAllocator.cpp), so the running total is what `torch.cuda.memory_allocated()` would show.
Categories are attached afterwards by storage id (`tag`), or inferred from the phase the allocation happened in.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_TO_COPY = torch.ops.aten._to_copy.default
BLOCK = 512  # kMinBlockSize: every CUDA allocation is a multiple of 512 bytes


def round_block(nbytes: int) -> int:
    return 0 if nbytes == 0 else -(-nbytes // BLOCK) * BLOCK


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's (FSDP2 shard's) memory is its local tensor's."""
    return getattr(t, "_local_tensor", t)


@dataclass
class Event:
    sid: int  # storage id (positive: allocation, negative: free of that id)
    nbytes: int  # requested bytes (unrounded) for allocations
    op: str = ""
    phase: str = ""


@dataclass
class TraceLog:
    events: list[Event] = field(default_factory=list)
    tags: dict[int, str] = field(default_factory=dict)  # sid -> category
    phases: dict[int, str] = field(default_factory=dict)  # sid -> phase at allocation


class StorageTracker(TorchDispatchMode):
    """Records allocations and frees of untyped storages seen at the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.log = TraceLog()
        self.phase = "build"
        self._live: dict[int, tuple[int, int]] = {}  # storage _cdata -> (sid, nbytes)
        self._next = 1

    # -- recording ---------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = None
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                if name is None:
                    name = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
                self.see(t, name)
        if func is _TO_COPY and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            # a cast of a weight (autocast's cached low-precision copy, PEFT's adapter casts): not an activation
            if self.log.tags.get(self.sid_of(args[0])) == "weights":
                self.tag(out, "weight_copies", override=False)
        return out

    def see(self, t: torch.Tensor, op: str = "") -> None:
        self.see_storage(_local(t).untyped_storage(), op)

    def see_storage(self, st: Any, op: str = "") -> None:
        key = st._cdata
        nbytes = st.nbytes()
        known = self._live.get(key)
        if known is not None:
            if known[1] == nbytes:
                return
            # storage resized in place (FSDP2 frees and re-allocates unsharded parameters this way)
            self._free(key, known[0])
        if nbytes == 0:
            # the CUDA allocator returns nullptr for empty requests; a later resize_ is seen above
            self._live[key] = (0, 0)
            weakref.finalize(st, self._drop, key, 0)
            return
        sid = self._next
        self._next += 1
        self._live[key] = (sid, nbytes)
        self.log.events.append(Event(sid, nbytes, op, self.phase))
        self.log.phases[sid] = self.phase
        if op == "resize_":
            self.log.tags[sid] = "unsharded_params"  # FSDP2 re-allocating a unit's full parameters
        if known is None:
            weakref.finalize(st, self._drop, key, sid)

    def _drop(self, key: int, sid: int) -> None:
        known = self._live.get(key)
        if known is None:
            return
        self._free(key, known[0])
        del self._live[key]

    def _free(self, key: int, sid: int) -> None:
        if sid:
            self.log.events.append(Event(-sid, 0))
        self._live[key] = (0, 0)

    @contextlib.contextmanager
    def watching_resizes(self) -> Iterator[None]:
        """FSDP2 frees and re-allocates unsharded parameters with `untyped_storage().resize_()`, which no op
        returns: see each resize as it happens."""
        orig = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage: Any, size: int) -> Any:
            out = orig(storage, size)
            tracker.see_storage(storage, "resize_")
            return out

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = orig  # type: ignore[method-assign]

    # -- labelling ---------------------------------------------------------------------------------------
    def sid_of(self, t: torch.Tensor) -> int:
        known = self._live.get(_local(t).untyped_storage()._cdata)
        return known[0] if known else 0

    def tag(self, t: torch.Tensor | None, category: str, override: bool = True) -> None:
        if t is None:
            return
        sid = self.sid_of(t)
        if sid and (override or sid not in self.log.tags):
            self.log.tags[sid] = category

    def live_bytes(self) -> int:
        return sum(round_block(n) for _, n in self._live.values())


@dataclass(frozen=True)
class Peak:
    allocated: int  # bytes, rounded to 512
    op: str
    phase: str
    index: int  # event index of the allocation that set the peak
    live: dict[int, int]  # sid -> rounded bytes, at the peak


def find_peak(log: TraceLog, exclude: frozenset[str] = frozenset({"host"}), after_phase_change: str | None = None) -> Peak:
    """Replay the log: the highest total of live rounded bytes, ignoring tags in `exclude` (host-side tensors)."""
    cur = 0
    best = -1
    best_i = 0
    sizes: dict[int, int] = {}
    for i, ev in enumerate(log.events):
        if ev.sid > 0:
            if log.tags.get(ev.sid) in exclude:
                continue
            b = round_block(ev.nbytes)
            sizes[ev.sid] = b
            cur += b
            if cur > best:
                best, best_i = cur, i
        else:
            cur -= sizes.pop(-ev.sid, 0)
    live: dict[int, int] = {}
    for ev in log.events[: best_i + 1]:
        if ev.sid > 0:
            if log.tags.get(ev.sid) in exclude:
                continue
            live[ev.sid] = round_block(ev.nbytes)
        else:
            live.pop(-ev.sid, None)
    ev = log.events[best_i] if log.events else Event(0, 0)
    return Peak(max(best, 0), ev.op, ev.phase, best_i, live)


def settle_build(log: TraceLog) -> TraceLog:
    """Drop what the model build allocated and freed again (random init, the bf16 weights a 4-bit base replaced):
    loading a checkpoint allocates the final parameters directly."""
    end = next((i for i, ev in enumerate(log.events) if ev.sid > 0 and ev.phase != "build"), len(log.events))
    alive: set[int] = set()
    for ev in log.events[:end]:
        if ev.sid > 0:
            alive.add(ev.sid)
        else:
            alive.discard(-ev.sid)
    events = [ev for ev in log.events if not (ev.phase == "build" and ev.sid > 0 and ev.sid not in alive)]
    kept = {ev.sid for ev in events if ev.sid > 0}
    events = [ev for ev in events if ev.sid > 0 or -ev.sid in kept]
    return TraceLog(events, log.tags, log.phases)
