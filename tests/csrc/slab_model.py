"""A small pure-Python model of csrc/slab_allocator, same policy, for differential tests.

Policy mirrored exactly: a new slab is the highest-index free one; each block
size keeps a list of slabs with room, most recently touched first; inside a
slab, freed blocks are reused LIFO before never-used ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Slab:
    state: str = "free"  # free | active | draining | reserved | resident
    block_bytes: int = 0
    capacity: int = 0
    bump: int = 0
    free_stack: list[int] = field(default_factory=list)
    live: set[int] = field(default_factory=set)


class SlabModel:
    def __init__(self, num_slabs: int, slab_bytes: int):
        self.slab_bytes = slab_bytes
        self.slabs = [_Slab() for _ in range(num_slabs)]
        self.free_slabs = set(range(num_slabs))
        self.partial: dict[int, list[int]] = {}  # block size -> slab ids, head first
        self.boundary = 0

    def allocate(self, block_bytes: int) -> int:
        if not 1 <= block_bytes <= self.slab_bytes:
            raise ValueError("bad size")
        room = self.partial.setdefault(block_bytes, [])
        if not room:
            if not self.free_slabs:
                raise MemoryError("full")
            sid = max(self.free_slabs)
            self.free_slabs.remove(sid)
            self.slabs[sid] = _Slab("active", block_bytes, self.slab_bytes // block_bytes)
            room.insert(0, sid)
        sid = room[0]
        slab = self.slabs[sid]
        index = slab.free_stack.pop() if slab.free_stack else slab.bump
        if index == slab.bump:
            slab.bump += 1
        slab.live.add(index)
        if len(slab.live) == slab.capacity:
            room.remove(sid)
        return sid * self.slab_bytes + index * block_bytes

    def free(self, handle: int) -> None:
        sid, offset = divmod(handle, self.slab_bytes)
        if not 0 <= sid < len(self.slabs):
            raise ValueError("out of range")
        slab = self.slabs[sid]
        if slab.state not in ("active", "draining") or offset % slab.block_bytes:
            raise ValueError("foreign")
        index = offset // slab.block_bytes
        if index not in slab.live:
            raise ValueError("not allocated")
        slab.live.remove(index)
        slab.free_stack.append(index)
        room = self.partial[slab.block_bytes]
        if not slab.live:
            if sid in room:
                room.remove(sid)
            if sid < self.boundary:
                self.slabs[sid] = _Slab("reserved")
            else:
                self.slabs[sid] = _Slab()
                self.free_slabs.add(sid)
        elif slab.state == "active" and sid not in room:
            room.insert(0, sid)

    def claim_run(self, count: int) -> int:
        """The lowest run of `count` contiguous free slabs becomes resident."""
        for first in range(len(self.slabs) - count + 1):
            if all(sid in self.free_slabs for sid in range(first, first + count)):
                for sid in range(first, first + count):
                    self.free_slabs.remove(sid)
                    self.slabs[sid].state = "resident"
                return first
        raise MemoryError("no run")

    def release_run(self, first: int, count: int) -> None:
        if first < 0 or count < 1 or first + count > len(self.slabs):
            raise ValueError("out of range")
        if any(self.slabs[sid].state != "resident" for sid in range(first, first + count)):
            raise ValueError("not resident")
        for sid in range(first, first + count):
            self.slabs[sid] = _Slab()
            self.free_slabs.add(sid)

    def set_reserved_slabs(self, count: int) -> int:
        if any(s.state == "resident" for s in self.slabs[self.boundary : count]):
            raise ValueError("resident slab in the way")
        for sid in range(count, self.boundary):
            slab = self.slabs[sid]
            if slab.state == "reserved":
                slab.state = "free"
                self.free_slabs.add(sid)
            elif slab.state == "draining":
                slab.state = "active"
                if len(slab.live) < slab.capacity:
                    self.partial[slab.block_bytes].insert(0, sid)
        for sid in range(self.boundary, count):
            slab = self.slabs[sid]
            if slab.state == "free":
                slab.state = "reserved"
                self.free_slabs.remove(sid)
            elif slab.state == "active":
                if sid in self.partial[slab.block_bytes]:
                    self.partial[slab.block_bytes].remove(sid)
                slab.state = "draining"
        self.boundary = count
        return sum(s.state == "draining" for s in self.slabs[:count])

    def stats(self) -> dict:
        assigned = [s for s in self.slabs if s.state in ("active", "draining")]
        per_size: dict[int, dict[str, int]] = {}
        for s in assigned:
            entry = per_size.setdefault(
                s.block_bytes, {"slabs": 0, "blocks_used": 0, "blocks_capacity": 0}
            )
            entry["slabs"] += 1
            entry["blocks_used"] += len(s.live)
            entry["blocks_capacity"] += s.capacity
        return {
            "slab_bytes": self.slab_bytes,
            "num_slabs": len(self.slabs),
            "free_slabs": len(self.free_slabs),
            "reserved_slabs": sum(s.state == "reserved" for s in self.slabs),
            "draining_slabs": sum(s.state == "draining" for s in self.slabs),
            "resident_slabs": sum(s.state == "resident" for s in self.slabs),
            "used_bytes": sum(len(s.live) * s.block_bytes for s in assigned),
            "internal_fragmentation_bytes": sum(
                self.slab_bytes - s.capacity * s.block_bytes for s in assigned
            ),
            "external_fragmentation_bytes": sum(
                (s.capacity - len(s.live)) * s.block_bytes for s in assigned
            ),
            "per_block_size": dict(sorted(per_size.items())),
        }
