"""The simulator and the profiler know tensor parallelism: `aegaeon profile --tp 2` measures one rank of a
2-rank instance into <device>/tp2/, and `aegaeon sim --tp 2` runs num_gpus / 2 such instances on it."""

import json
import math

from click.testing import CliRunner

from aegaeon.cli import main
from aegaeon.config.sim import SimConfig
from aegaeon.models.config import load_arch_config
from aegaeon.parallel.shard import shard_config
from aegaeon.sim.aegaeon_system import split_instances


def test_a_tp_2_profile_is_one_ranks_and_the_simulator_runs_instances_of_two_devices(tmp_path):
    runner = CliRunner()
    model, profiles = tmp_path / "tiny", tmp_path / "profiles"
    assert runner.invoke(main, ["make-model", str(model)]).exit_code == 0
    result = runner.invoke(
        main,
        ["profile", "--model", str(model), "--tp", "2", "--input-lens", "8,16,32"]
        + ["--batches", "1,2", "--out", str(profiles)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((profiles / "cpu" / "tp2" / "tiny.json").read_text())
    assert data["tensor_parallel"] == 2 and len(data["table"]) == 6
    shard = shard_config(load_arch_config(model), 0, 2)
    # one rank's shard: the checkpoint's float32 weights, split by the shard rules
    assert data["weight_bytes"] == sum(4 * math.prod(s) for s in shard.parameter_shapes().values())
    common = ["--num-models", "4", "--arrival-rate", "0.1", "--duration", "30", "--device", "cpu"]
    common += ["--profiles", str(profiles), "--mix", "tiny", "--workloads", str(tmp_path / "w")]
    out = tmp_path / "json"
    result = runner.invoke(
        main,
        [
            "sim",
            *common,
            "--tp",
            "2",
            "--num-gpus",
            "8",
            "--policy",
            "aegaeon,sllm",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    runs = {p.name: json.loads(p.read_text()) for p in out.iterdir()}
    assert sorted(runs) == [
        "aegaeon_tp2-4-0.1-1.0-1.0-ttft10-tpot0.1.json",
        "sllm_tp2-4-0.1-1.0-1.0-ttft10-tpot0.1.json",
    ]
    aegaeon = runs["aegaeon_tp2-4-0.1-1.0-1.0-ttft10-tpot0.1.json"]
    assert aegaeon["tp"] == 2 and aegaeon["num_gpus"] == 8 and aegaeon["finished_share"] > 0
    assert split_instances(SimConfig(num_gpus=8, tp=2)) == (1, 3)  # 8 devices make 4 instances
    missing = runner.invoke(
        main, ["sim", *common, "--tp", "4", "--num-gpus", "8", "--out", str(out)]
    )
    assert missing.exit_code != 0 and "no profiles for device 'cpu' at --tp 4" in missing.output
    odd = runner.invoke(main, ["sim", *common, "--tp", "2", "--num-gpus", "3", "--out", str(out)])
    assert odd.exit_code != 0 and "must make at least 2 instances of --tp 2" in odd.output


def test_the_tp4_panel_draws_results_of_degree_4_and_is_absent_without_them(tmp_path):
    runner = CliRunner()
    model, profiles, out = tmp_path / "tiny4", tmp_path / "profiles", tmp_path / "json"
    made = runner.invoke(main, ["make-model", str(model), "--heads", "4", "--kv-heads", "4"])
    assert made.exit_code == 0, made.output
    empty = runner.invoke(main, ["plot", "tp4", "--json-dir", str(out), "--out", str(tmp_path)])
    assert empty.exit_code != 0 and "no results of --tp 4 with 4 models" in empty.output
    profiled = runner.invoke(
        main,
        ["profile", "--model", str(model), "--tp", "4", "--input-lens", "8,16,32"]
        + ["--batches", "1,2", "--out", str(profiles)],
    )
    assert profiled.exit_code == 0, profiled.output
    simulated = runner.invoke(
        main,
        ["sim", "--num-models", "4", "--arrival-rate", "0.1,0.3", "--duration", "30", "--tp", "4"]
        + ["--num-gpus", "8", "--device", "cpu", "--profiles", str(profiles), "--mix", "tiny4"]
        + ["--policy", "aegaeon,sllm", "--workloads", str(tmp_path / "w"), "--out", str(out)],
    )
    assert simulated.exit_code == 0, simulated.output
    figs = tmp_path / "figs"
    drawn = runner.invoke(main, ["plot", "tp4", "--json-dir", str(out), "--out", str(figs)])
    assert drawn.exit_code == 0, drawn.output
    (png,) = figs.glob("tp4-sim-cpu-*.png")
    assert png.stat().st_size > 1000
