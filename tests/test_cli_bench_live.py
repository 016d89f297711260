"""`aegaeon bench e2e` and `bench sim-vs-live`: live nodes replaying workloads, and the simulator
compared with them."""

import json

import pytest
from click.testing import CliRunner

from aegaeon.bench.trace import BREAKDOWN_PARTS
from aegaeon.cli import main


def test_e2e_benchmark_replays_a_workload_file_and_writes_live_json_with_traces(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("AEGAEON_HOME", str(tmp_path / "home"))
    workloads = tmp_path / "workloads"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "e2e",
            "--num-models",
            "3",
            "--arrival-rate",
            "0.5",
            "--duration",
            "4",
            "--instances",
            "2",
            "--policy",
            "aegaeon",
            "--outlen-scale",
            "0.1",
            "--workloads",
            str(workloads),
            "--out",
            str(tmp_path / "json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        workloads / "synth-3-0.5-0.2-0.1.csv"
    ).is_file()  # generated once, replayed from the file
    files = list((tmp_path / "json").glob("live-aegaeon-3-0.5-0.2-0.1-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["source"] == "live" and data["num_requests"] == len(data["requests"]) > 0
    assert data["finished_share"] == 1.0
    for record in data["requests"]:
        parts = record["breakdown"]
        assert set(parts) == set(BREAKDOWN_PARTS)
        assert min(parts.values()) > -0.005  # clocks of two processes: allow a few ms of skew
        assert sum(parts.values()) == pytest.approx(record["finish"] - record["arrival"], abs=1e-6)
    trace = data["trace"]
    assert trace["switches"] and all(
        s["copy_weights"] >= 0 and s["bytes"] > 0 for s in trace["switches"]
    )
    labels = {s["label"] for s in trace["swaps"]}
    assert {"export", "import"} <= labels  # every request's KV went prefill -> host cache -> decode
    assert sum(s["bytes"] for s in trace["swaps"] if s["label"] == "export") == sum(
        s["bytes"] for s in trace["swaps"] if s["label"] == "import"
    )
    assert trace["memory"] and all(m["total"] > 0 for m in trace["memory"])
    assert (
        set(trace["nodes"].values()) == {"local"} and len(trace["nodes"]) == 2
    )  # one node, two workers


def test_e2e_benchmark_refuses_what_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGAEON_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "e2e", "--nnodes", "0", "--workloads", str(tmp_path)])
    assert result.exit_code != 0 and "must be positive" in result.output
    result = runner.invoke(
        main, ["bench", "e2e", "--inlen-scale", "0.25", "--workloads", str(tmp_path)]
    )
    assert result.exit_code != 0 and "one decimal" in result.output


def test_sim_vs_live_profiles_calibrates_and_averages_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGAEON_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "sim-vs-live",
            "--num-models",
            "2",
            "--arrival-rate",
            "1,0.5",
            "--seeds",
            "0,1",
            "--calibration-runs",
            "1",
            "--duration",
            "3",
            "--outlen-scale",
            "0.1",
            "--profile-input-lens",
            "8,32",
            "--profile-batches",
            "1,2",
            "--workloads",
            str(tmp_path / "w"),
            "--profiles",
            str(tmp_path / "profiles"),
            "--out",
            str(tmp_path / "json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "profiles").glob("cpu-*t/market-shape*.json"))) == 2
    lines = result.output.splitlines()
    rows = lines[
        lines.index(next(line for line in lines if line.startswith("models  rate requests"))) + 1 :
    ][:2]
    assert [r.split()[:2] for r in rows] == [["2", "1"], ["2", "0.5"]]
    assert "largest gap (points):" in result.output
    assert "each run predicted with the profile calibrated on the other runs" in result.output
    # the extra calibration run's workload is another seed's, kept apart from the compared ones
    assert len(list((tmp_path / "w" / "seed1000").glob("synth-2-1-*.csv"))) == 1
    assert len(list((tmp_path / "w" / "seed1").glob("synth-2-*.csv"))) == 2
    for seed in (0, 1):
        names = sorted(
            p.name.split("-aegaeon")[0] for p in (tmp_path / "json" / f"seed{seed}").glob("*.json")
        )
        assert names == [
            "live",
            "live",
            "sim-cpu",
            "sim-cpu",
            "sim-cpu-bare",
            "sim-cpu-bare",
            "sim-cpu-insitu",
            "sim-cpu-insitu",
        ]
    for rate in ("1", "0.5"):  # the printed live attainment is the mean over the seeds
        live = [
            json.loads(
                next(
                    (tmp_path / "json" / f"seed{seed}").glob(f"live-aegaeon-2-{rate}-*.json")
                ).read_text()
            )["slo_attainment"]
            for seed in (0, 1)
        ]
        row = next(r for r in rows if r.split()[1] == rate)
        assert row.split()[3] == f"{sum(live) / 2:.1%}"


def test_sim_vs_live_rejects_a_repeated_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGAEON_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["bench", "sim-vs-live", "--seeds", "1,1"])
    assert result.exit_code != 0 and "repeats a seed" in result.output
