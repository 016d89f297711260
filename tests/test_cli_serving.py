"""`aegaeon make-model`, `generate` and `serve`'s model arguments, and `aegaeon-launch status` and
`cleanup`: happy paths and clean errors."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aegaeon.cli import main
from aegaeon.launch import main as launch_main


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


def test_launch_status_and_cleanup_on_an_empty_cluster():
    runner = CliRunner()
    assert "0 objects" in runner.invoke(launch_main, ["status", "--cluster-id", "clitest"]).output
    assert "removed 0" in runner.invoke(launch_main, ["cleanup", "--cluster-id", "clitest"]).output
    bad = runner.invoke(launch_main, ["status", "--cluster-id", "bad/id"])
    assert bad.exit_code != 0 and "cluster id" in bad.output
