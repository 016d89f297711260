"""`aegaeon workload`, `sim`, `plot` and `profile`: happy paths and clean errors."""

import json
from pathlib import Path

from click.testing import CliRunner

from aegaeon.cli import main
from tests.cli_helpers import invoke

RAW = Path(__file__).resolve().parent / "data"


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


def test_the_papers_testbed_h800_profiles_ship_and_simulate(tmp_path):
    from aegaeon.profiles import load_device_profiles

    costs, link = load_device_profiles("H800")
    assert {"llama2_13b_chat", "qwen2_5_7b", "yi1_5_9b_chat"} <= set(costs)  # the paper's, and more
    assert link.device_memory_bytes == 80 * 2**30
    result = invoke(
        "sim",
        "--device",
        "H800",
        "--policy",
        "aegaeon",
        "--num-models",
        "4",
        "--arrival-rate",
        "0.1",
        "--duration",
        "30",
        "--workloads",
        str(tmp_path / "w"),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "o").glob("*.json")
    assert json.loads(path.read_text())["device"] == "H800"


def _paper_workload_args(work, out) -> list[str]:
    """`aegaeon sim` arguments that replay the paper's 16-model file from `work` into `out`."""
    work.mkdir()
    (work / "synth-16-0.1-1.0-1.0.csv").write_text((RAW / "synth-16-0.1-1.0-1.0.csv").read_text())
    return [
        "--num-models",
        "16",
        "--arrival-rate",
        "0.1",
        "--workloads",
        str(work),
        "--out",
        str(out),
    ]


def test_the_artifact_baselines_run_on_a_paper_workload_and_their_gap_is_reported(tmp_path):
    work, out = tmp_path / "w", tmp_path / "j"
    common = _paper_workload_args(work, out)
    assert invoke("sim", "--policy", "sllm-ae,sllm+-ae,sllm", *common).exit_code == 0
    other = invoke(
        "sim", "--policy", "sllm-ae", "--ae-latency", "profile", "--model-mapping", "index", *common
    )
    assert other.exit_code == 0, other.output
    names = sorted(p.name for p in out.iterdir())
    assert "sllm-ae_mapindex_projlat-16-0.1-1.0-1.0-ttft10-tpot0.1.json" in names
    faithful = json.loads((out / "sllm-ae-16-0.1-1.0-1.0-ttft10-tpot0.1.json").read_text())
    ours = json.loads((out / "sllm-16-0.1-1.0-1.0-ttft10-tpot0.1.json").read_text())
    assert faithful["model_mapping"] == "appearance" and ours["model_mapping"] == "index"
    assert faithful["replay_seconds"] == 120.0 and faithful["num_requests"] == 156
    assert faithful["failed"] == 0 and 0.99 <= faithful["slo_attainment_paper"] <= 1.0
    reference = tmp_path / "ref.jsonl"
    reference.write_text(
        json.dumps(
            {
                "policy": "sllm-ae",
                "num_models": 16,
                "arrival_rate": 0.1,
                "slo_attainment_paper": 0.9,
            }
        )
        + "\n"
    )
    gap = invoke("bench", "artifact-gap", "--json-dir", str(out), "--reference", str(reference))
    assert gap.exit_code == 0, gap.output
    expected = 100 * (faithful["slo_attainment_paper"] - 0.9)
    assert f"{expected:+.1f}" in gap.output and "1 points" in gap.output


def test_the_paper_scorer_figure_is_drawn_beside_ours(tmp_path):
    work, out, figs = tmp_path / "w", tmp_path / "j", tmp_path / "f"
    common = _paper_workload_args(work, out)
    assert invoke("sim", "--policy", "sllm-ae,sllm", *common).exit_code == 0
    for scorer in ("ours", "paper"):
        drawn = invoke(
            "plot",
            "e2e",
            "--spec",
            "0.1",
            "--scorer",
            scorer,
            "--json-dir",
            str(out),
            "--out",
            str(figs),
        )
        assert drawn.exit_code == 0, drawn.output
    assert (figs / "e2e-0.1.png").exists() and (figs / "e2e-0.1-paper.png").exists()
    assert (
        invoke("workload", "gen", "--num-models", "4").exit_code != 0
    )  # needs a rate, or --paper-grid


def test_figure_17s_a10_panel_is_drawn_from_a10_results(tmp_path):
    out, figs = tmp_path / "j", tmp_path / "f"
    result = invoke(
        "sim",
        "--device",
        "A10",
        "--num-gpus",
        "4",
        "--mix",
        "qwen2_5_7b,yi1_5_6b_chat",
        "--num-models",
        "4",
        "--arrival-rate",
        "0.1",
        "--duration",
        "60",
        "--ttft-slo",
        "5",
        "--tpot-slo",
        "0.1",
        "--policy",
        "aegaeon,sllm",
        "--workloads",
        str(tmp_path / "w"),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    drawn = invoke("plot", "a10", "--json-dir", str(out), "--out", str(figs))
    assert drawn.exit_code == 0, drawn.output
    assert (figs / "e2e-a10-tpot0.1.png").exists() and "skipped a10-tpot0.05" in drawn.output
    assert invoke("plot", "a10", "--json-dir", str(tmp_path / "none")).exit_code == 1
