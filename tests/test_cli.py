"""The `aegaeon` and `aegaeon-launch` commands: happy paths and clean errors."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aegaeon.bench.e2e import BREAKDOWN_PARTS
from aegaeon.cli import main
from aegaeon.launch import main as launch_main

RAW = Path(__file__).resolve().parent / "data"


def invoke(*args, cwd=None):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_workload_gen_writes_every_combination(tmp_path):
    result = invoke(
        "workload",
        "gen",
        "--num-models",
        "4,8",
        "--arrival-rate",
        "0.1",
        "--duration",
        "60",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synth-4-0.1-1.0-1.0.csv",
        "synth-8-0.1-1.0-1.0.csv",
    ]
    spaced = invoke(
        "workload",
        "gen",
        "--num-models",
        "4",
        "6",
        "--arrival-rate",
        "0.1",
        "0.2",
        "--duration",
        "60",
        "--out",
        str(tmp_path / "spaced"),
    )
    assert spaced.exit_code == 0, spaced.output
    assert len(list((tmp_path / "spaced").iterdir())) == 4


def test_sim_writes_json_and_plot_draws_it(tmp_path):
    out, work, figs = tmp_path / "json", tmp_path / "workloads", tmp_path / "figs"
    result = invoke(
        "sim",
        "--num-models",
        "4:8:4",
        "--arrival-rate",
        "0.1",
        "--duration",
        "60",
        "--policy",
        "aegaeon,sllm",
        "--workloads",
        str(work),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "aegaeon-4-0.1-1.0-1.0-ttft10-tpot0.1.json",
        "aegaeon-8-0.1-1.0-1.0-ttft10-tpot0.1.json",
        "sllm-4-0.1-1.0-1.0-ttft10-tpot0.1.json",
        "sllm-8-0.1-1.0-1.0-ttft10-tpot0.1.json",
    ]
    assert (work / "synth-8-0.1-1.0-1.0.csv").exists()
    assert 0.0 <= json.loads((out / files[0]).read_text())["slo_attainment"] <= 1.0
    result = invoke("plot", "e2e", "--spec", "0.1", "--json-dir", str(out), "--out", str(figs))
    assert result.exit_code == 0, result.output
    assert (figs / "e2e-0.1.png").stat().st_size > 1000 and (figs / "e2e-0.1.pdf").exists()


def test_sim_ablation_of_aegaeon_settings_is_kept_apart_from_the_default_result(tmp_path):
    out, work = tmp_path / "json", tmp_path / "workloads"
    common = [
        "--num-models",
        "8",
        "--arrival-rate",
        "0.1",
        "--duration",
        "60",
        "--workloads",
        str(work),
        "--out",
        str(out),
    ]
    assert invoke("sim", "--policy", "aegaeon,sllm", *common).exit_code == 0
    result = invoke(
        "sim",
        "--policy",
        "aegaeon,sllm",
        "--max-quota",
        "2",
        "--aegaeon-switch-efficiency",
        "1",
        *common,
    )
    assert result.exit_code == 0, result.output
    assert "2nd-tok p90" in result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "aegaeon-8-0.1-1.0-1.0-ttft10-tpot0.1.json",
        "aegaeon_q2_eff1-8-0.1-1.0-1.0-ttft10-tpot0.1.json",
        "sllm-8-0.1-1.0-1.0-ttft10-tpot0.1.json",
    ]  # the baseline does not depend on either knob
    default, ablation = (json.loads((out / name).read_text()) for name in files[:2])
    assert (default["variant"], default["max_quota"]) == ("", 4.0)
    assert (ablation["variant"], ablation["max_quota"], ablation["switch_efficiency"]) == (
        "q2_eff1",
        2.0,
        1.0,
    )
    result = invoke(
        "plot", "e2e", "--spec", "0.1", "--json-dir", str(out), "--out", str(tmp_path / "figs")
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["sim", "--policy", "aegaeon", "--max-quota", "0", *common])
    assert (
        result.exit_code != 0
        and "--max-quota" in result.output
        and "Traceback" not in result.output
    )


def test_sim_replays_an_existing_paper_workload(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "synth-16-0.1-1.0-1.0.csv").write_text((RAW / "synth-16-0.1-1.0-1.0.csv").read_text())
    result = invoke(
        "sim",
        "--num-models",
        "16",
        "--arrival-rate",
        "0.1",
        "--policy",
        "aegaeon",
        "--workloads",
        str(work),
        "--out",
        str(tmp_path / "j"),
    )
    assert result.exit_code == 0, result.output
    data = json.loads(next((tmp_path / "j").iterdir()).read_text())
    assert data["num_requests"] == 156


def test_bad_flags_give_one_clear_line_not_a_traceback(tmp_path):
    cases = [
        (["sim", "--num-models", "16", "--arrival-rate", "0.1", "--policy", "vllm"], "unknown"),
        (["sim", "--num-models", "x", "--arrival-rate", "0.1"], "--num-models"),
        (["sim", "--num-models", "", "--arrival-rate", "0.1"], "empty"),
        (["plot", "e2e", "--spec", "0.1", "--json-dir", str(tmp_path)], "no results"),
        (["plot", "e2e", "--spec", "fig99", "--json-dir", str(tmp_path)], "unknown figure"),
        (["workload", "gen", "--num-models", "0", "--arrival-rate", "0.1"], "at least 1"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(
            main, args + ["--out", str(tmp_path / "o")] if args[0] != "plot" else args
        )
        assert result.exit_code != 0, args
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_profile_fit_reports_the_fit_error(tmp_path):
    raw = tmp_path / "raw" / "qwen2_5_7b"
    raw.mkdir(parents=True)
    for i, b, p, d in [
        (16, 1, 0.01, 0.009),
        (64, 4, 0.012, 0.0092),
        (256, 4, 0.024, 0.0093),
        (512, 8, 0.09, 0.0098),
        (128, 16, 0.045, 0.0105),
        (16, 100, 0.043, 0.017),
    ]:
        (raw / f"i{i}b{b}.json").write_text(
            json.dumps({"avg_prefill_latency": p, "avg_decode_latency": d})
        )
    result = invoke(
        "profile", "fit", str(tmp_path / "raw"), "--device", "T", "--out", str(tmp_path / "p")
    )
    assert result.exit_code == 0, result.output
    assert "decode mean" in result.output and (tmp_path / "p" / "T" / "qwen2_5_7b.json").exists()


def test_bench_alloc_prints_json():
    result = invoke("bench", "alloc", "--pairs", "2000", "--json")
    data = json.loads(result.output)
    assert data["pairs"] == 2000 and data["cpp_pairs_per_s"] > 0


def test_launch_status_and_cleanup_on_an_empty_cluster():
    runner = CliRunner()
    assert "0 objects" in runner.invoke(launch_main, ["status", "--cluster-id", "clitest"]).output
    assert "removed 0" in runner.invoke(launch_main, ["cleanup", "--cluster-id", "clitest"]).output
    bad = runner.invoke(launch_main, ["status", "--cluster-id", "bad/id"])
    assert bad.exit_code != 0 and "cluster id" in bad.output


def test_make_model_then_generate_json_lines_for_every_model_and_prompt(tmp_path):
    runner = CliRunner()
    a, b = tmp_path / "a", tmp_path / "b"
    assert runner.invoke(main, ["make-model", str(a), "--seed", "1"]).exit_code == 0
    made = runner.invoke(
        main, ["make-model", str(b), "--arch", "qwen2", "--hidden", "96", "--heads", "6"]
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        main,
        [
            "generate",
            "--models",
            f"{a},{b}",
            "--prompt",
            "one pool",
            "--prompt",
            "two",
            "--max-tokens",
            "5",
            "--steps-per-turn",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["model"], d["prompt"]) for d in lines] == [
        ("a", "one pool"),
        ("b", "one pool"),
        ("a", "two"),
        ("b", "two"),
    ]
    assert all(len(d["token_ids"]) == 5 and isinstance(d["text"], str) for d in lines)


def test_generate_reports_a_bad_model_and_still_serves_the_good_one(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["make-model", str(tmp_path / "good")]).exit_code == 0
    (tmp_path / "bad").mkdir()
    result = runner.invoke(
        main,
        [
            "generate",
            "--models",
            f"{tmp_path / 'good'},{tmp_path / 'bad'}",
            "--json",
            "--max-tokens",
            "2",
            "--prompt",
            "x",
        ],
    )
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "error" not in lines[0] and "no config.json" in lines[1]["error"]
    assert "Traceback" not in result.output


def test_generate_runs_the_embedded_demo_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("AEGAEON_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["generate", "--max-tokens", "3", "--json"])
    assert result.exit_code == 0, result.output
    models = {json.loads(line)["model"] for line in result.stdout.splitlines()}
    assert models == {"demo-llama-a", "demo-llama-b", "demo-qwen"}


def test_profile_measures_a_checkpoint_in_the_shared_schema_and_the_simulator_loads_it(tmp_path):
    from aegaeon.profiles import load_profile

    runner = CliRunner()
    assert runner.invoke(main, ["make-model", str(tmp_path / "tiny")]).exit_code == 0
    result = runner.invoke(
        main,
        [
            "profile",
            "--model",
            str(tmp_path / "tiny"),
            "--input-lens",
            "8,16,32",
            "--batches",
            "1,2",
            "--out",
            str(tmp_path / "profiles"),
        ],
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "profiles" / "cpu" / "tiny.json"
    data = json.loads(path.read_text())
    assert data["schema"] == "aegaeon-profile/1" and len(data["table"]) == 6
    assert all(row["prefill_s"] > 0 and row["decode_s"] > 0 for row in data["table"])
    cost, link = load_profile(path)
    assert (
        cost.decode_time(2, 64) > 0 and link.h2d_bandwidth > 0 and 0 < link.switch_efficiency <= 1
    )


def test_profile_refuses_input_lengths_beyond_the_context(tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(main, ["make-model", str(tmp_path / "t"), "--max-position", "32"]).exit_code
        == 0
    )
    result = runner.invoke(
        main,
        [
            "profile",
            "--model",
            str(tmp_path / "t"),
            "--input-lens",
            "64",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code != 0 and "exceed its context of 32" in result.output
    bad = runner.invoke(main, ["profile", "--model", str(tmp_path / "t"), "--batches", "two"])
    assert bad.exit_code == 2 and "--batches" in bad.output


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


def test_ipc_benchmark_reports_both_transports():
    result = CliRunner().invoke(main, ["bench", "ipc", "--round-trips", "200"])
    assert result.exit_code == 0, result.output
    assert "shm ring:" in result.output and "ratio ring / pipe:" in result.output


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


def test_list_flags_take_the_artifacts_space_separated_form():
    from aegaeon.cli.root import join_list_values

    assert join_list_values(
        [
            "sim",
            "--num-models",
            "16",
            "20",
            "24",
            "--arrival-rate",
            "0.05",
            "0.1",
            "--policy",
            "sllm",
        ]
    ) == ["sim", "--num-models", "16,20,24", "--arrival-rate", "0.05,0.1", "--policy", "sllm"]
    assert join_list_values(["workload", "gen", "--num-models", "16:80:4"]) == [
        "workload",
        "gen",
        "--num-models",
        "16:80:4",
    ]


def test_models_as_arguments_with_served_names_like_vllm_serve(tmp_path):
    from aegaeon.cli_node import node_settings
    from aegaeon.models.maker import make_model
    from tests.models.reference import SMALL_SHAPE

    first, second = (
        make_model(tmp_path / "first", SMALL_SHAPE),
        make_model(tmp_path / "second", SMALL_SHAPE),
    )
    config, _ = node_settings(
        {"model_args": (str(first), str(second)), "served_names": ("alpha,beta",)}
    )
    assert {name: Path(path) for name, path in config.models.items()} == {
        "alpha": first,
        "beta": second,
    }
    config, _ = node_settings(
        {"model_args": (str(first),), "models_spec": str(second)}
    )  # both ways add up
    assert sorted(config.models) == ["first", "second"]
    for given, complaint in [
        (
            {"model_args": (str(first), str(second)), "served_names": ("alpha",)},
            "1 names for 2 models",
        ),
        ({"model_args": (f"x={first}",), "served_names": ("alpha",)}, "already name their models"),
        ({"model_args": (str(first), str(second)), "served_names": ("a", "a")}, "repeat"),
    ]:
        with pytest.raises(Exception, match=complaint) as err:
            node_settings(given)
        assert "--served-model-name" in str(err.value.param_hint)


def test_both_commands_print_their_version_and_share_the_cluster_id_default():
    import aegaeon
    from aegaeon.cli_node import node_settings

    assert (
        CliRunner().invoke(main, ["--version"]).output.strip()
        == f"aegaeon, version {aegaeon.__version__}"
    )
    assert (
        CliRunner().invoke(launch_main, ["--version"]).output.strip().endswith(aegaeon.__version__)
    )
    config, _ = node_settings({})  # what `aegaeon serve` and `aegaeon-launch start` both get
    status = CliRunner().invoke(
        launch_main, ["status"]
    )  # `status` looks at the same cluster by default
    assert status.exit_code == 0 and status.output.startswith(f"cluster {config.cluster_id}:")
