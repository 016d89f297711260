"""`aegaeon bench` of one component (allocator, IPC, scheduling, HTTP) and of the engine on a tiny
checkpoint (switch, weights, swap, decode, attention)."""

import json

from click.testing import CliRunner

from aegaeon.cli import main
from tests.cli_helpers import invoke


def test_bench_alloc_prints_json():
    result = invoke("bench", "alloc", "--pairs", "2000", "--json")
    data = json.loads(result.output)
    assert data["pairs"] == 2000 and data["cpp_pairs_per_s"] > 0


def test_engine_benchmarks_run_on_a_tiny_model(tmp_path):
    runner = CliRunner()
    model = str(tmp_path / "tiny")
    assert runner.invoke(main, ["make-model", model]).exit_code == 0
    for args, expect in [
        (["switch", "--model", model, "--switches", "2"], "switch / plain copy:"),
        (["weights", "--model", model], "ratio cache / raw:"),
        (["swap", "--model", model, "--blocks", "4", "--threads", "1"], "during swaps"),
        (["decode", "--model", model, "--batch", "2", "--steps", "2"], "ratio aegaeon / hf:"),
        (
            [
                "attention",
                "--model",
                model,
                "--batch",
                "2",
                "--total-context",
                "24",
                "--steps",
                "2",
            ],
            "skewed 1 x1 + 23",
        ),
    ]:
        result = runner.invoke(main, ["bench", *args])
        assert result.exit_code == 0, (args, result.output)
        assert expect in result.output


def test_layerwise_benchmark_measures_both_switches_beside_the_rule(tmp_path):
    runner = CliRunner()
    model = str(tmp_path / "tiny")
    assert runner.invoke(main, ["make-model", model]).exit_code == 0
    args = ["bench", "layerwise", "--model", model, "--prefills", "16", "--decode-batches", "2"]
    result = runner.invoke(main, [*args, "--ratios", "2", "--trials", "1", "--json"])
    assert result.exit_code == 0, result.output
    points = json.loads(result.output[result.output.index("[") :])
    assert [(p["kind"], p["size"], p["ratio"]) for p in points] == [
        ("prefill", 16, 2.0),
        ("decode", 2, 2.0),
    ]
    for point in points:
        assert point["copy_s"] > 0 and point["whole_copy_exposed_s"]["median"] > 0
        assert 0 <= point["predicted_s"] <= point["copy_s"]
    bad = runner.invoke(main, [*args, "--ratios", "0"])
    assert bad.exit_code == 2 and "each positive" in bad.output


def test_ipc_benchmark_reports_both_transports():
    result = CliRunner().invoke(main, ["bench", "ipc", "--round-trips", "200"])
    assert result.exit_code == 0, result.output
    assert "shm ring:" in result.output and "ratio ring / pipe:" in result.output


def test_sched_benchmark_reports_both_policies():
    result = CliRunner().invoke(main, ["bench", "sched"])
    assert result.exit_code == 0, result.output
    assert "prefill placements:" in result.output and "decode rounds:" in result.output


def test_http_benchmark_compares_both_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGAEON_HOME", str(tmp_path))
    result = CliRunner().invoke(
        main, ["bench", "http", "--requests", "6", "--concurrency", "2", "--max-tokens", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "in-process / http throughput:" in result.output
