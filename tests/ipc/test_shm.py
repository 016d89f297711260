"""POSIX shared memory: naming, permissions, zero-copy views, two processes, stale cleanup."""

import multiprocessing as mp
import os
import signal
import stat
import uuid

import numpy as np
import pytest
import torch

from aegaeon.errors import ClusterRunningError, SharedMemoryError
from aegaeon.ipc.shm import SHM_DIR, ShmNamespace, inspect_cluster, object_name, remove_stale


@pytest.fixture
def cluster_id():
    cid = f"t{uuid.uuid4().hex[:10]}"
    yield cid
    for path in SHM_DIR.iterdir():  # never leak, even on failure
        if f"aegaeon-{cid}-" in path.name:
            path.unlink(missing_ok=True)


def _child_writes(cluster_id: str) -> None:
    ns = ShmNamespace(cluster_id)
    segment = ns.attach_segment("data")
    segment.as_numpy(np.int64, (16,))[:] = np.arange(16) * 7
    ns.open_semaphore("ready").release()


def _child_claims_and_hangs(cluster_id: str, claimed) -> None:
    ns = ShmNamespace(cluster_id).claim()
    ns.create_segment("kv", 4096)
    ns.create_semaphore("s")
    claimed.set()
    signal.pause()


def test_segments_are_named_per_cluster_and_private(cluster_id):
    with ShmNamespace(cluster_id) as ns:
        ns.create_segment("weights", 4096)
        ns.create_semaphore("ready")
        path = SHM_DIR / f"aegaeon-{cluster_id}-weights"
        assert path.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (SHM_DIR / f"sem.aegaeon-{cluster_id}-ready").exists()
    assert not list(p for p in SHM_DIR.iterdir() if cluster_id in p.name)


def test_numpy_and_torch_views_share_bytes_without_copies(cluster_id):
    with ShmNamespace(cluster_id) as ns:
        segment = ns.create_segment("buf", 1 << 16)
        arr = segment.as_numpy(np.float32, (64, 4), offset=1024)
        ten = segment.as_tensor(torch.float32, (64, 4), offset=1024)
        ten.fill_(2.5)
        assert np.all(arr == 2.5)
        arr[0, 0] = -1
        assert ten[0, 0].item() == -1
        with pytest.raises(SharedMemoryError, match="exceed its size"):
            segment.as_numpy(np.float64, (1 << 14,))
        del arr, ten


def test_two_processes_share_a_segment_and_a_semaphore(cluster_id):
    with ShmNamespace(cluster_id) as ns:
        segment = ns.create_segment("data", 16 * 8)
        ready = ns.create_semaphore("ready")
        child = mp.get_context("spawn").Process(target=_child_writes, args=(cluster_id,))
        child.start()
        ready.acquire(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert segment.as_numpy(np.int64, (16,)).tolist() == [i * 7 for i in range(16)]


def test_stale_objects_of_a_killed_owner_are_found_and_removed(cluster_id):
    ctx = mp.get_context("spawn")
    claimed = ctx.Event()
    child = ctx.Process(target=_child_claims_and_hangs, args=(cluster_id, claimed))
    child.start()
    assert claimed.wait(60)
    report = inspect_cluster(cluster_id)
    assert report.owner_pid == child.pid and report.owner_alive
    with pytest.raises(ClusterRunningError, match=str(child.pid)):
        remove_stale(cluster_id)
    with pytest.raises(ClusterRunningError):
        ShmNamespace(cluster_id).claim()

    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    assert not inspect_cluster(cluster_id).owner_alive
    removed = remove_stale(cluster_id)
    assert set(removed) == {
        f"aegaeon-{cluster_id}-owner",
        f"aegaeon-{cluster_id}-kv",
        f"sem.aegaeon-{cluster_id}-s",
    }
    with ShmNamespace(cluster_id) as ns:  # a new run starts cleanly
        ns.create_segment("kv", 4096)


def test_bad_names_and_sizes_are_rejected(cluster_id):
    with pytest.raises(SharedMemoryError, match="cluster id"):
        object_name("bad/id", "x")
    with pytest.raises(SharedMemoryError, match="object name"):
        object_name(cluster_id, "")
    with ShmNamespace(cluster_id) as ns:
        with pytest.raises(SharedMemoryError, match="size 0"):
            ns.create_segment("empty", 0)
        ns.create_segment("twice", 64)
        with pytest.raises(SharedMemoryError, match="twice"):
            ns.create_segment("twice", 64)
        with pytest.raises(SharedMemoryError, match="missing"):
            ns.attach_segment("missing")


def test_populate_faults_in_pages_without_changing_their_bytes():
    from aegaeon.ipc.shm import ShmNamespace

    with ShmNamespace("populate1") as ns:
        seg = ns.create_segment("data", 3 * 4096 + 100)
        view = seg.as_numpy("uint8", (seg.size,))
        view[5000:5010] = 7
        seg.populate(4000, 6000)
        seg.populate()
        assert view[5000:5010].tolist() == [7] * 10 and int(view.sum()) == 70


def test_cleanup_refuses_while_another_process_maps_the_clusters_memory():
    import subprocess
    import sys

    from aegaeon.errors import ClusterRunningError
    from aegaeon.ipc.shm import SHM_DIR, SharedSegment, processes_mapping, remove_stale

    segment = SharedSegment.create("/aegaeon-orphantest-weights", 4096)
    try:
        # a stand-in for an orphaned worker: it maps the segment and stays
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; from aegaeon.ipc.shm import SharedSegment; "
                "s = SharedSegment.attach('/aegaeon-orphantest-weights'); print('up', flush=True); "
                "time.sleep(60)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "up"
        assert processes_mapping("orphantest") == [holder.pid]
        with pytest.raises(ClusterRunningError, match=str(holder.pid)):
            remove_stale("orphantest")
        assert (SHM_DIR / "aegaeon-orphantest-weights").exists()
        holder.kill()
        holder.wait()
        assert remove_stale("orphantest", wait=2.0) == ["aegaeon-orphantest-weights"]
    finally:
        segment.close()
        (SHM_DIR / "aegaeon-orphantest-weights").unlink(missing_ok=True)
