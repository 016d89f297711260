import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from aegaeon.errors import CheckpointError, ConfigError
from aegaeon.ipc.shm import SHM_DIR, ShmNamespace
from aegaeon.models.maker import config_for, make_model
from aegaeon.weights.checkpoint import open_checkpoint
from aegaeon.weights.host_cache import HostWeightCache


@pytest.fixture
def two_models(tmp_path):
    a = make_model(tmp_path / "a", config_for("llama"), seed=1)
    b = make_model(
        tmp_path / "b",
        config_for("qwen2", hidden=96, heads=6, kv_heads=3),
        seed=2,
        shard_bytes=60_000,
    )
    return [open_checkpoint(a), open_checkpoint(b)]


def _tensors(ckpt):
    out = {}
    for file in sorted(ckpt.path.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def test_cached_weights_equal_the_checkpoint_and_live_in_a_0600_segment(two_models):
    with ShmNamespace("hcache1") as ns:
        cache = HostWeightCache(ns, two_models)
        cache.start_prefetch(order=["b"])
        for ckpt in two_models:
            cache.wait(ckpt.name)
            views = cache.models[ckpt.name].layout.views(cache.region(ckpt.name))
            for name, tensor in _tensors(ckpt).items():
                assert torch.equal(views[name], tensor), name
        mode = stat.S_IMODE(os.stat(SHM_DIR / "aegaeon-hcache1-weights.0").st_mode)
        assert mode == 0o600
    assert not (SHM_DIR / "aegaeon-hcache1-weights.0").exists()


def test_dtype_conversion_on_load(two_models):
    with ShmNamespace("hcache2") as ns:
        cache = HostWeightCache(ns, two_models, dtype="bfloat16")
        cache.load("a")
        views = cache.models["a"].layout.views(cache.region("a"))
        ref = _tensors(two_models[0])["model.embed_tokens.weight"].to(torch.bfloat16)
        assert views["model.embed_tokens.weight"].dtype == torch.bfloat16
        assert torch.equal(views["model.embed_tokens.weight"], ref)


def test_progress_reports_reach_the_model_size(two_models):
    seen = []
    with ShmNamespace("hcache3") as ns:
        cache = HostWeightCache(ns, two_models)
        cache.load("a", progress=lambda model, done, total: seen.append((model, done, total)))
    assert seen[-1][1] <= seen[-1][2] and seen[-1][1] > 0.99 * seen[-1][2]
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)


def test_a_file_changed_after_validation_fails_that_model_only(two_models):
    path = two_models[0].path / "model.safetensors"
    with ShmNamespace("hcache4") as ns:
        cache = HostWeightCache(ns, two_models)
        path.write_bytes(path.read_bytes()[:1000])
        cache.start_prefetch()
        with pytest.raises(CheckpointError, match="model a: loading weights failed"):
            cache.wait("a")
        cache.wait("b")
        assert cache.is_ready("b") and not cache.is_ready("a")


def test_unknown_model_and_duplicate_names_are_refused(two_models):
    with ShmNamespace("hcache5") as ns:
        with pytest.raises(ConfigError, match="registered twice"):
            HostWeightCache(ns, [two_models[0], two_models[0]])
        cache = HostWeightCache(ns, two_models)
        with pytest.raises(ConfigError, match="model zz is not in the host weight cache"):
            cache.region("zz")


def test_a_stale_cache_segment_of_a_crashed_run_is_removed_at_start(two_models):
    import subprocess
    import sys

    code = (
        "import os; from aegaeon.ipc.shm import ShmNamespace; ns = ShmNamespace('hcache6').claim(); "
        "ns.create_segment('weights.0', 4096); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (SHM_DIR / "aegaeon-hcache6-weights.0").exists()
    with ShmNamespace("hcache6") as ns:
        HostWeightCache(ns, two_models)
        assert (SHM_DIR / "aegaeon-hcache6-weights.0").stat().st_size > 4096
    assert not (SHM_DIR / "aegaeon-hcache6-weights.0").exists()


def test_prefetch_loads_models_in_the_configured_order(two_models):
    order = []
    with ShmNamespace("hcache7") as ns:
        cache = HostWeightCache(ns, two_models)
        cache.start_prefetch(order=["b"], progress=lambda model, done, total: order.append(model))
        cache.join()
        with pytest.raises(ConfigError, match="model zz"):
            cache.start_prefetch(order=["zz"])
    assert list(dict.fromkeys(order)) == ["b", "a"]


def test_pinning_on_a_build_without_cuda_fails_clearly_and_close_still_works(two_models):
    from aegaeon.native import _C

    if _C.built_with_cuda():
        pytest.skip("CUDA build: pinning works there")
    with ShmNamespace("hcache8") as ns:
        cache = HostWeightCache(ns, two_models)
        with pytest.raises(RuntimeError, match="needs a CUDA build"):
            cache.pin()
        cache.close()


def _attached_reader(cluster: str, paths: list, out) -> None:
    from aegaeon.weights.checkpoint import open_checkpoint as open_ckpt

    ckpts = [open_ckpt(p) for p in paths]
    cache = HostWeightCache.attach(cluster, ckpts)
    try:
        cache.wait("b", timeout=60)
        views = cache.models["b"].layout.views(cache.region("b"))
        ok = all(torch.equal(views[name], tensor) for name, tensor in _tensors(ckpts[1]).items())
        out.put(("ok" if ok else "mismatch", cache.is_ready("b")))
    except Exception as err:  # report to the parent instead of dying silently
        out.put((repr(err), False))
    finally:
        cache.close()


def test_another_process_attaches_the_node_cache_and_reads_the_weights_once_ready(two_models):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ShmNamespace("hcache9") as ns:
        cache = HostWeightCache(ns, two_models)
        out = ctx.Queue()
        child = ctx.Process(
            target=_attached_reader, args=("hcache9", [c.path for c in two_models], out)
        )
        child.start()
        cache.start_prefetch(order=["b"])
        result = out.get(timeout=120)
        child.join(timeout=60)
    assert result == ("ok", True)


def test_attaching_with_other_checkpoints_or_loading_from_a_reader_is_refused(two_models):
    with ShmNamespace("hcache10") as ns:
        HostWeightCache(ns, two_models)
        with pytest.raises(ConfigError, match="holds 'a'.* not model b"):
            HostWeightCache.attach("hcache10", two_models[::-1])
        reader = HostWeightCache.attach("hcache10", two_models)
        with pytest.raises(ConfigError, match="only the process that created"):
            reader.load("a")
        reader.close()


def test_models_added_and_removed_while_running_get_segments_of_their_own(two_models, tmp_path):
    third = open_checkpoint(make_model(tmp_path / "c", config_for("llama", layers=1), seed=3), "c")
    with ShmNamespace("hcache11") as ns:
        cache = HostWeightCache(ns, two_models[:1])
        cache.start_prefetch()
        added = cache.add(third)
        cache.wait("c")  # not in the prefetch order: waiting loads it
        assert added.segment_name == "weights.1" and cache.is_ready("c")
        reader = HostWeightCache.attach("hcache11", [two_models[0]])
        reader.attach_model(third, added.segment_name)
        reader.wait("c", timeout=10)
        views = reader.models["c"].layout.views(reader.region("c"))
        for name, tensor in _tensors(third).items():
            assert torch.equal(views[name], tensor), name
        cache.remove("c")
        assert not (SHM_DIR / "aegaeon-hcache11-weights.1").exists()
        assert torch.equal(
            views["model.embed_tokens.weight"], _tensors(third)["model.embed_tokens.weight"]
        )
        del views  # the reader's mapping outlived the unlink; now it lets go
        reader.detach_model("c")
        with pytest.raises(ConfigError, match="no segment weights.1"):
            reader.attach_model(third, "weights.1")
        assert sorted(cache.segment_names()) == ["a"]
        again = cache.add(third)  # a new segment name: nothing can map the old one by mistake
        assert again.segment_name == "weights.2"
        reader.close()
