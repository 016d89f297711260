"""The emulated host<->device link (aegaeon.device_link): pacing, FIFO order, and unchanged outputs."""

import threading
import time

import pytest

from aegaeon.config.serving import EngineConfig
from aegaeon.device_link import DeviceLink, EmulatedLink, make_link
from aegaeon.engine.local import LocalEngine as Engine
from aegaeon.errors import ConfigError
from aegaeon.models.maker import make_model
from aegaeon.models.sampler import SamplingParams
from tests.models.reference import LARGE_SHAPE, SMALL_SHAPE

SLAB = 64 * 1024


def test_a_transfer_takes_at_least_its_bytes_over_the_rate():
    link = EmulatedLink(0.5)  # 0.5 GB/s: 10 MB take 20 ms
    copied = []
    took = link.transfer(10_000_000, lambda: copied.append(1))
    assert copied == [1]
    assert took >= 0.020 - 1e-4


def test_the_link_is_one_fifo_channel_shared_by_threads():
    link = EmulatedLink(1.0)  # 5 MB take 5 ms; four at once take 20 ms end to end
    ends = []
    began = time.perf_counter()

    def send():
        link.transfer(5_000_000, lambda: None)
        ends.append(time.perf_counter() - began)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(ends) >= 0.020 - 1e-4


def test_a_slow_copy_is_not_paced_further():
    link = EmulatedLink(1000.0)  # 1 KB at 1 TB/s: the copy's own 10 ms dominate
    took = link.transfer(1000, lambda: time.sleep(0.010))
    assert 0.010 <= took < 0.5


def test_configuration_refuses_a_bad_rate_and_a_real_device():
    with pytest.raises(ConfigError, match="positive"):
        EmulatedLink(0)
    with pytest.raises(ConfigError, match="positive"):
        EngineConfig(link_gbps=-1.0)
    with pytest.raises(ConfigError, match="CPU"):
        EngineConfig(device="cuda:0", link_gbps=2.0)
    assert type(make_link(None)) is DeviceLink and make_link(3.0).gbps == 3.0


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("linkpool")
    return {
        "a": make_model(root / "a", SMALL_SHAPE, seed=1),
        "c": make_model(root / "c", LARGE_SHAPE, seed=3),
    }


def test_an_emulated_link_slows_switches_to_its_rate_without_changing_outputs(pool):
    sampling = SamplingParams(max_tokens=8)
    requests = [(m, "one gpu many models") for m in pool] * 2
    with Engine(pool, EngineConfig(slab_bytes=SLAB, steps_per_turn=1)) as native:
        expected = [r.token_ids for r in native.generate(requests, sampling)]
    gbps = 0.05
    with Engine(pool, EngineConfig(slab_bytes=SLAB, steps_per_turn=1, link_gbps=gbps)) as paced:
        results = paced.generate(requests, sampling)
        switches = paced.executor.runner.switches
        assert paced.executor.link.describe() == "emulated at 0.05 GB/s"
    assert [r.token_ids for r in results] == expected
    assert len(switches) >= 4
    for record in switches:
        assert record.seconds >= record.bytes_copied / (gbps * 1e9) - 1e-4, record
