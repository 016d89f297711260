"""The `aegaeon` and `aegaeon-launch` commands as a whole: one clear line for a bad flag, the paper
artifact's space-separated lists, the version. Each command family has its own file: test_cli_study.py,
test_cli_serving.py, test_cli_bench.py and test_cli_bench_live.py."""

from click.testing import CliRunner

from aegaeon.cli import main
from aegaeon.launch import main as launch_main


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


def test_every_command_reports_an_aegaeon_error_as_one_line_and_exit_code_1(tmp_path):
    """The root groups turn AegaeonError into `Error: ...` for every command (no per-command wrapper)."""
    result = CliRunner().invoke(main, ["make-model", str(tmp_path / "m"), "--vocab", "10"])
    assert result.exit_code == 1 and "Error: --vocab 10 is too small" in result.output
    result = CliRunner().invoke(launch_main, ["status", "--cluster-id", "bad id!"])
    assert result.exit_code == 1 and "cluster id 'bad id!' is invalid" in result.output
