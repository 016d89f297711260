"""Figures 14-16 from traced results: the numbers printed are the data's, files are written, bad input is named."""

import json

import pytest
from click.testing import CliRunner

from aegaeon.bench.trace import BREAKDOWN_PARTS
from aegaeon.cli import main
from aegaeon.errors import ConfigError
from aegaeon.trace_plots import cross_node_handoffs, fragmentation, load_traced_runs


def traced_result(policy="aegaeon"):
    requests = []
    for i in range(4):
        parts = {k: 0.001 * (j + 1) * (i + 1) for j, k in enumerate(BREAKDOWN_PARTS)}
        requests.append(
            {
                "id": i,
                "arrival": float(i),
                "finish": float(i) + sum(parts.values()),
                "breakdown": parts,
            }
        )
    requests.append(
        {"id": 4, "arrival": 5.0, "finish": None, "breakdown": None}
    )  # unfinished: left out
    switch = {"wait_weights": 0.0, "evict_kv": 0.001, "copy_weights": 0.004, "bind": 0.001}
    memory = {
        "total": 1000,
        "weight_region": 200,
        "weights": 150,
        "kv_free": 700,
        "internal_fragmentation": 8,
        "external_fragmentation": 32,
    }
    return {
        "policy": policy,
        "source": "live",
        "num_models": 4,
        "arrival_rate": 0.5,
        "inlen_scale": 0.2,
        "outlen_scale": 0.2,
        "requests": requests,
        "trace": {
            "start": 0.0,
            "switches": [
                {
                    "t": 0.1 * i,
                    "worker": 1,
                    "model": "m",
                    "seconds": 0.001 * (i + 1),
                    "bytes": 10,
                    "label": "",
                    **switch,
                }
                for i in range(10)
            ],
            "swaps": [
                {
                    "t": 0.1,
                    "worker": 0,
                    "model": "m",
                    "seconds": 0.002,
                    "bytes": 2_000_000,
                    "label": "export",
                    "request": 0,
                },
                {
                    "t": 0.2,
                    "worker": 1,
                    "model": "m",
                    "seconds": 0.004,
                    "bytes": 2_000_000,
                    "label": "import",
                    "request": 0,
                },
            ],
            "memory": [
                {
                    "t": 0.25 * i,
                    "worker": 1,
                    "model": "m",
                    "seconds": 0.0,
                    "bytes": 0,
                    "label": "",
                    "kv_used": 100 * i,
                    **memory,
                }
                for i in range(3)
            ],
        },
    }


@pytest.fixture
def json_dir(tmp_path):
    folder = tmp_path / "json"
    folder.mkdir()
    (folder / "live-aegaeon.json").write_text(json.dumps(traced_result()))
    (folder / "live-sllm.json").write_text(json.dumps(traced_result("sllm")))
    (folder / "aegaeon-sim.json").write_text(
        json.dumps({"policy": "aegaeon", "source": "sim"})
    )  # no trace: skipped
    return folder


def test_fragmentation_is_the_unused_share_of_slabs_in_the_kv_region():
    assert fragmentation(traced_result()["trace"]["memory"][0]) == pytest.approx(40 / 800)


@pytest.mark.parametrize(
    "figure, files, expected",
    [
        (
            "breakdown",
            "fig14-breakdown",
            ["(mean ms over 4 requests): queue 2.50", "copy_weights 4.000"],
        ),
        ("autoscale-cdf", "fig15-autoscale-cdf", ["n=10 p50 5.500 ms"]),
        (
            "kvcache-cdf",
            "fig16-kvcache-cdf",
            ["(export) latency n=1 p50 2.000 ms", "1.00 GB/s", "0.50 GB/s"],
        ),
        ("frag", "frag", ["over 2 samples with KV in use: mean 5.00%"]),
    ],
)
def test_each_figure_prints_its_numbers_and_writes_pdf_and_png(
    json_dir, tmp_path, figure, files, expected
):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["plot", figure, "--json", str(json_dir), "--policy", "aegaeon", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output
    assert "sllm" not in result.output  # --policy filters
    assert (out / f"{files}.pdf").stat().st_size > 0 and (out / f"{files}.png").stat().st_size > 0


def test_missing_traces_are_a_clear_error(tmp_path):
    (tmp_path / "sim.json").write_text(json.dumps({"policy": "aegaeon", "source": "sim"}))
    with pytest.raises(ConfigError, match="run `aegaeon bench e2e` first"):
        load_traced_runs([tmp_path])
    (tmp_path / "broken.json").write_text("{")
    result = CliRunner().invoke(main, ["plot", "frag", "--json", str(tmp_path / "broken.json")])
    assert result.exit_code != 0 and "broken.json: not a readable result JSON" in result.output


def test_the_plots_script_draws_every_figure_the_results_allow(json_dir, tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("aegaeon") is None:
        pytest.skip("the aegaeon command is not on PATH (package not installed)")
    script = Path(__file__).resolve().parents[2] / "plots" / "make_figures.sh"
    done = subprocess.run(
        ["bash", str(script), str(json_dir), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "4 figure(s)" in done.stderr
    )  # 14, 15, 16 and fragmentation; no simulator results for 11-13
    assert (tmp_path / "out" / "fig15-autoscale-cdf.png").is_file()


def test_cross_node_handoffs_count_requests_whose_kv_changed_node():
    trace = {
        "nodes": {"0": "local", "1": "local", "4": "node1"},
        "swaps": [
            {"label": "export", "worker": 0, "request": 0},
            {"label": "import", "worker": 4, "request": 0},
            {"label": "export", "worker": 0, "request": 1},
            {"label": "import", "worker": 1, "request": 1},
            {"label": "export", "worker": 0, "request": 2},
        ],
    }  # request 2 never reached a decode worker
    assert (
        cross_node_handoffs(trace)
        == "KV handoffs across nodes: 1 of 2 (local -> local 1, local -> node1 1)"
    )


def test_the_breakdown_counts_prefetched_and_resident_switches_and_names_the_variant(tmp_path):
    result = traced_result()
    result["variant"] = "prefetch"
    stages = [
        {
            "wait_prefetch": 0.002,
            "bind": 0.001,
        },  # copied during the turn before: waited for the rest
        {"resident": 0.0, "bind": 0.001},  # still in the other slot: only re-bound
    ]
    for switch, extra in zip(result["trace"]["switches"], stages * 5):
        for key in ("wait_weights", "evict_kv", "copy_weights"):
            del switch[key]
        switch.update(extra)
    (tmp_path / "live-aegaeon_prefetch.json").write_text(json.dumps(result))
    out = CliRunner().invoke(
        main, ["plot", "breakdown", "--json", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert out.exit_code == 0, out.output
    assert "aegaeon (prefetch) 4m" in out.output
    assert (
        "copy_weights 0.000, wait_prefetch 1.000, wait_layers 0.000, resident 0.000, bind 1.000"
        in out.output
    )
