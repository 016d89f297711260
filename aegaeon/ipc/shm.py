"""POSIX shared memory and semaphores, named per cluster id.

Every object of a cluster lives under the prefix `aegaeon-<cluster_id>-` in
/dev/shm (semaphores as `sem.aegaeon-<cluster_id>-...`), is created with mode
0600, and is unlinked by the process that created it. One process per node owns
a cluster's namespace; it records its pid and process start time in the
segment `aegaeon-<cluster_id>-owner`. A later start finds objects whose owner
is gone (a crashed run) and removes them before creating new ones.

Segments map without copies as numpy arrays or torch tensors.

Slightly over 300 lines: the namespace, its segments and the stale-run cleanup share the naming and
ownership rules kept here.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import posix_ipc

from aegaeon.errors import ClusterRunningError, SharedMemoryError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
MODE = 0o600
_NAME_RE = re.compile(r"^[A-Za-z0-9_.]{1,64}$")
_OWNER = "owner"
_OWNER_FORMAT = "<qq"  # pid, process start time in clock ticks
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+


def _check_part(kind: str, value: str) -> str:
    if not _NAME_RE.match(value):
        raise SharedMemoryError(
            f"{kind} {value!r} is invalid: use 1-64 letters, digits, '_' or '.'"
        )
    return value


def object_name(cluster_id: str, name: str) -> str:
    """The POSIX name ('/aegaeon-<cluster>-<name>') of a cluster's object."""
    return f"/aegaeon-{_check_part('cluster id', cluster_id)}-{_check_part('object name', name)}"


def _process_start_ticks(pid: int) -> int | None:
    """Start time of a live process (distinguishes a reused pid), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class SharedSegment:
    """One mapped POSIX shared-memory segment."""

    def __init__(self, name: str, size: int, *, create: bool):
        self.name = name
        try:
            if create:
                if size <= 0:
                    raise SharedMemoryError(
                        f"segment {name}: size {size} is invalid, it must be positive"
                    )
                shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=MODE, size=size)
            else:
                shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise SharedMemoryError(f"segment {name}: {exc}") from exc
        try:
            self._map = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        self.size = len(self._map)
        self.owned = create

    @classmethod
    def create(cls, name: str, size: int) -> "SharedSegment":
        return cls(name, size, create=True)

    @classmethod
    def attach(cls, name: str) -> "SharedSegment":
        return cls(name, 0, create=False)

    @property
    def buffer(self) -> mmap.mmap:
        return self._map

    def as_numpy(
        self, dtype: np.dtype | str, shape: tuple[int, ...], offset: int = 0
    ) -> np.ndarray:
        """A numpy view (no copy) of `shape` items of `dtype` at byte `offset`."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        self._check_range(offset, count * dtype.itemsize)
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape)

    def as_tensor(
        self, dtype: "torch.dtype", shape: tuple[int, ...], offset: int = 0
    ) -> "torch.Tensor":
        """A torch view (no copy) of `shape` items of `dtype` at byte `offset`."""
        import torch

        itemsize = torch.empty((), dtype=dtype).element_size()
        count = int(np.prod(shape, dtype=np.int64))
        self._check_range(offset, count * itemsize)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=offset).view(shape)

    def populate(self, offset: int = 0, nbytes: int | None = None) -> None:
        """Fault in the pages of a byte range now, so later copies into it run at memory speed."""
        nbytes = self.size - offset if nbytes is None else nbytes
        self._check_range(offset, nbytes)
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            self._map.madvise(_MADV_POPULATE_WRITE, start, offset + nbytes - start)
        except OSError:  # kernels before 5.14: touch one byte per page instead
            pages = np.frombuffer(
                self._map, dtype=np.uint8, count=offset + nbytes - start, offset=start
            )
            pages[:: mmap.PAGESIZE] |= 0

    def _check_range(self, offset: int, nbytes: int) -> None:
        if offset < 0 or offset + nbytes > self.size:
            raise SharedMemoryError(
                f"segment {self.name}: bytes [{offset}, {offset + nbytes}) exceed its size {self.size}"
            )

    def close(self) -> None:
        """Unmap, unless numpy/torch views still use the mapping (then it goes with them)."""
        try:
            self._map.close()
        except BufferError:
            log.debug("segment %s still has views; it is unmapped when they go", self.name)

    def unlink(self) -> None:
        try:
            posix_ipc.unlink_shared_memory(self.name)
        except posix_ipc.ExistentialError:
            log.debug("segment %s was already removed", self.name)


@dataclass(frozen=True)
class StaleReport:
    cluster_id: str
    owner_pid: int | None
    owner_alive: bool
    objects: tuple[str, ...]  # file names under /dev/shm


def _cluster_files(cluster_id: str) -> list[Path]:
    prefix = f"aegaeon-{_check_part('cluster id', cluster_id)}-"
    return sorted(
        p
        for p in SHM_DIR.iterdir()
        if p.name.startswith(prefix) or p.name.startswith("sem." + prefix)
    )


def inspect_cluster(cluster_id: str) -> StaleReport:
    """Which objects of `cluster_id` exist, and whether their owner lives."""
    files = _cluster_files(cluster_id)
    pid = None
    alive = False
    try:
        owner = SharedSegment.attach(object_name(cluster_id, _OWNER))
    except SharedMemoryError:
        owner = None
    if owner is not None:
        pid, start = struct.unpack_from(_OWNER_FORMAT, owner.buffer)
        owner.close()
        alive = _process_start_ticks(pid) == start
    return StaleReport(cluster_id, pid, alive, tuple(p.name for p in files))


def processes_mapping(cluster_id: str) -> list[int]:
    """Pids of other live processes that have an object of `cluster_id` mapped (a crashed run's orphaned
    workers, say), from /proc/<pid>/maps."""
    needle = f"{SHM_DIR}/aegaeon-{_check_part('cluster id', cluster_id)}-"
    users = []
    for maps in Path("/proc").glob("[0-9]*/maps"):
        pid = int(maps.parent.name)
        if pid == os.getpid():
            continue
        try:
            if needle in maps.read_text():
                users.append(pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return sorted(users)


def remove_stale(cluster_id: str, wait: float = 0.0) -> list[str]:
    """Remove the objects of a crashed run of `cluster_id`; returns their names.

    Raises ClusterRunningError if the owner of the namespace is still alive, or if any other process still
    has one of its objects mapped after `wait` seconds (orphaned workers notice a dead parent within about
    a second and exit; unlinking under them would leave them writing into memory nobody reads).
    """
    report = inspect_cluster(cluster_id)
    if report.owner_alive:
        raise ClusterRunningError(
            f"cluster {cluster_id!r} is owned by live process {report.owner_pid}: stop it first, or give this run its own --cluster-id"
        )
    if report.objects:
        deadline = time.monotonic() + wait
        users = processes_mapping(cluster_id)
        while users and time.monotonic() < deadline:
            time.sleep(0.1)
            users = processes_mapping(cluster_id)
        if users:
            raise ClusterRunningError(
                f"cluster {cluster_id!r}: processes {users} of its run still map its shared memory; stop them "
                f"(kill {' '.join(map(str, users))}) or wait for them to exit, then clean up"
            )
    for name in report.objects:
        (SHM_DIR / name).unlink(missing_ok=True)
    if report.objects:
        log.warning(
            "removed %d stale shared-memory objects of cluster %r", len(report.objects), cluster_id
        )
    return list(report.objects)


class ShmNamespace:
    """The shared-memory objects one process creates for a cluster on a node.

    `claim()` takes ownership (removing a crashed run's leftovers); `close()`
    unlinks everything this namespace created. Use it as a context manager.
    """

    def __init__(self, cluster_id: str):
        self.cluster_id = _check_part("cluster id", cluster_id)
        self._segments: list[SharedSegment] = []
        self._semaphores: list[posix_ipc.Semaphore] = []

    def claim(self) -> "ShmNamespace":
        remove_stale(self.cluster_id, wait=5.0)
        owner = self.create_segment(_OWNER, struct.calcsize(_OWNER_FORMAT))
        pid = os.getpid()
        struct.pack_into(_OWNER_FORMAT, owner.buffer, 0, pid, _process_start_ticks(pid) or 0)
        return self

    def create_segment(self, name: str, size: int) -> SharedSegment:
        segment = SharedSegment.create(object_name(self.cluster_id, name), size)
        self._segments.append(segment)
        return segment

    def remove_segment(self, segment: SharedSegment) -> None:
        """Unlink and unmap one segment this namespace created, before the namespace closes."""
        segment.unlink()
        segment.close()
        self._segments = [s for s in self._segments if s is not segment]

    def attach_segment(self, name: str) -> SharedSegment:
        return SharedSegment.attach(object_name(self.cluster_id, name))

    def create_semaphore(self, name: str, initial_value: int = 0) -> posix_ipc.Semaphore:
        full = object_name(self.cluster_id, name)
        try:
            sem = posix_ipc.Semaphore(
                full, posix_ipc.O_CREX, mode=MODE, initial_value=initial_value
            )
        except posix_ipc.ExistentialError as exc:
            raise SharedMemoryError(f"semaphore {full}: {exc}") from exc
        self._semaphores.append(sem)
        return sem

    def open_semaphore(self, name: str) -> posix_ipc.Semaphore:
        full = object_name(self.cluster_id, name)
        try:
            return posix_ipc.Semaphore(full)
        except posix_ipc.ExistentialError as exc:
            raise SharedMemoryError(f"semaphore {full}: {exc}") from exc

    def close(self) -> None:
        for sem in self._semaphores:
            try:
                sem.unlink()
            except posix_ipc.ExistentialError:
                pass
            sem.close()
        for segment in reversed(self._segments):  # owner record last
            segment.unlink()
            segment.close()
        self._segments.clear()
        self._semaphores.clear()

    def __enter__(self) -> "ShmNamespace":
        return self.claim()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
