"""Chaos in CI (bounded, loopback only): workers killed at random under load, and a joined node killed
and replaced by a new one; nothing may be lost, no token may differ from the undisturbed run, and the
cluster must end at full strength."""

from aegaeon.bench.chaos import bench_chaos
from aegaeon.models.maker import make_model
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE


def test_random_worker_kills_under_load_lose_nothing(tmp_path):
    models = {
        f"c{i}": str(make_model(tmp_path / f"c{i}", SMALL_SHAPE if i % 2 else LARGE_SHAPE, seed=i))
        for i in range(4)
    }
    r = bench_chaos(
        models,
        requests=32,
        kills=3,
        max_tokens=24,
        seed=1,
        cluster_id="chaostest",
        timeout=120,
        node_kill=True,
    )
    assert r.kills == 3
    assert r.lost == 0 and r.failed == 0 and r.wrong == 0, r.render()
    assert r.hostile > 0 and r.hostile_served == r.hostile, r.render()
    assert r.completed == r.requests >= 32 and r.back_to_full and r.restarts >= 3, r.render()
    assert r.node_kills == 1 and r.rejoined, r.render()
