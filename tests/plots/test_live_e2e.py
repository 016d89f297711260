"""Live `bench e2e` sweeps plot as figure-11-style figures, one per workload and SLO setting."""

import json

import pytest

from aegaeon.errors import ConfigError
from aegaeon.plotting import plot_live_e2e


def _live(
    policy: str, num_models: int, attainment: float, ttft: float = 1.4930971145310148
) -> dict:
    return {
        "policy": policy,
        "source": "live",
        "num_models": num_models,
        "arrival_rate": 0.5,
        "inlen_scale": 0.2,
        "outlen_scale": 0.2,
        "ttft_slo": ttft,
        "tpot_slo": ttft / 100,
        "nnodes": 1,
        "slo_attainment": attainment,
        "link_gbps": 0.0157,
        "link_like": "H100",
    }


def test_each_sweep_gets_its_figure_and_simulated_results_are_left_out(tmp_path):
    runs = [
        _live("aegaeon", 4, 1.0),
        _live("aegaeon", 8, 0.95),
        _live("sllm", 4, 1.0),
        _live("sllm", 8, 0.7),
        _live("aegaeon", 4, 1.0, ttft=3.0),
        {**_live("sllm", 4, 0.5), "source": "sim"},
    ]
    for i, run in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(run))
    paths = plot_live_e2e(tmp_path, tmp_path / "out")
    assert sorted(p.suffix for p in paths) == [
        ".pdf",
        ".pdf",
        ".png",
        ".png",
    ]  # two SLO settings, two figures
    assert all(p.stat().st_size > 0 for p in paths)


def test_a_folder_without_live_results_is_a_clear_error(tmp_path):
    (tmp_path / "sim.json").write_text(json.dumps({**_live("sllm", 4, 0.5), "source": "sim"}))
    with pytest.raises(ConfigError, match="no live results"):
        plot_live_e2e(tmp_path, tmp_path / "out")
