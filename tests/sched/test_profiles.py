"""Profiles: the fit recovers known coefficients, rejects broken points, files load."""

import json

import pytest

from aegaeon.config import PAPER_MODELS
from aegaeon.errors import ConfigError
from aegaeon.profiles import (
    H100_LINK,
    TablePoint,
    build_profile,
    cost_model_for_workload,
    fit_model_cost,
    load_profile,
    profiles_dir,
    write_profile,
)
from aegaeon.sched.cost import ModelCost

SPEC = PAPER_MODELS["qwen2_5_7b"]


def synthetic_points(prefill, decode, broken_decode=None):
    truth = ModelCost(
        "t", SPEC.hidden_size, SPEC.intermediate_size, 16, 1, 1, 4096, prefill, decode
    )
    points = []
    for i in (16, 64, 256, 1024):
        for b in (1, 2, 4, 8, 16, 64):
            if i * b <= 4096:
                points.append(
                    TablePoint(i, b, truth.prefill_time([i] * b), truth.decode_time(b, b * i))
                )
    if broken_decode:
        points.append(TablePoint(2048, 2, truth.prefill_time([2048] * 2), broken_decode))
    return points


def test_fit_recovers_known_coefficients():
    prefill, decode = (1e-13, 2e-12, 0.008), (4e-11, 5e-11, 4e-13)
    cost, excluded = fit_model_cost(SPEC, synthetic_points(prefill, decode))
    assert cost.prefill_coefficients == pytest.approx(prefill, rel=1e-6)
    assert cost.decode_coefficients == pytest.approx(decode, rel=1e-6)
    assert excluded == {}


def test_a_broken_decode_point_is_excluded_and_reported():
    decode = (4e-11, 5e-11, 4e-13)
    cost, excluded = fit_model_cost(
        SPEC, synthetic_points((1e-13, 0.0, 0.008), decode, broken_decode=0.0004)
    )
    assert list(excluded) == ["i2048b2"] and "decode" in excluded["i2048b2"]
    assert cost.decode_coefficients == pytest.approx(decode, rel=1e-6)


def test_profile_round_trips_through_its_json_schema(tmp_path):
    profile = build_profile(
        "TEST", SPEC, synthetic_points((1e-13, 0.0, 0.008), (4e-11, 5e-11, 4e-13)), H100_LINK
    )
    path = write_profile(profile, tmp_path)
    cost, link = load_profile(path)
    assert path == tmp_path / "TEST" / "qwen2_5_7b.json"
    assert cost.weight_bytes == SPEC.weight_bytes and link == H100_LINK
    assert profile["fit_error"]["decode_max_rel"] < 1e-6


def test_broken_profiles_name_the_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(ConfigError, match="x.json"):
        load_profile(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(bad)


def test_shipped_h100_profiles_fit_their_tables():
    for model in PAPER_MODELS:
        data = json.loads((profiles_dir() / "H100" / f"{model}.json").read_text())
        assert data["fit_error"]["decode_mean_rel"] < 0.10
        assert data["fit_error"]["prefill_mean_rel"] < 0.15
        cost, _ = load_profile(profiles_dir() / "H100" / f"{model}.json")
        point = next(p for p in data["table"] if p["input_len"] == 128 and p["batch"] == 8)
        assert cost.decode_time(8, 8 * 128) == pytest.approx(point["decode_s"], rel=0.3)


def test_workload_names_map_to_the_paper_mix():
    cost = cost_model_for_workload(["synth_model_00", "synth_model_07", "synth_model_19"])
    assert cost.model("synth_model_00").name == "qwen2_5_7b"
    assert cost.model("synth_model_07").name == "yi1_5_9b_chat"
    assert cost.model("synth_model_19").name == "llama2_13b_chat"
    assert cost.switch_time("synth_model_00", "synth_model_19") == pytest.approx(
        PAPER_MODELS["llama2_13b_chat"].weight_bytes / (55e9 * 0.15)
    )
    with pytest.raises(ConfigError, match="no index"):
        cost_model_for_workload(["mystery"])
    with pytest.raises(ConfigError, match="no profiles"):
        cost_model_for_workload(["synth_model_00"], device="TPU9")


@pytest.mark.parametrize(
    "device, memory_gib, models",
    [
        ("H800", 80, 6),
        ("H20", 96, 3),
        ("A100", 80, 6),
        ("A10", 24, 4),
    ],
)
def test_every_device_the_artifact_measured_ships_fitted_profiles(device, memory_gib, models):
    from aegaeon.profiles import load_device_profiles

    costs, link = load_device_profiles(device)
    assert len(costs) == models and link.device_memory_bytes == memory_gib * 2**30
    for name in costs:
        data = json.loads((profiles_dir() / device / f"{name}.json").read_text())
        assert data["device"] == device and len(data["table"]) > 20
        # every table point carries its fit, so the error per point can be read off the file
        assert all("prefill_fit_s" in p and "decode_fit_s" in p for p in data["table"])
        assert data["fit_error"]["prefill_mean_rel"] < 0.25
        assert data["fit_error"]["decode_mean_rel"] < 0.25


def test_sim_takes_the_devices_memory_and_a_model_mix(tmp_path):
    from tests.cli_helpers import invoke

    out = tmp_path / "j"
    result = invoke(
        "sim",
        "--num-models",
        "4",
        "--arrival-rate",
        "0.1",
        "--device",
        "A10",
        "--num-gpus",
        "4",
        "--mix",
        "qwen2_5_7b,yi1_5_6b_chat",
        "--policy",
        "sllm",
        "--duration",
        "60",
        "--workloads",
        str(tmp_path / "w"),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    record = json.loads(next(out.iterdir()).read_text())
    assert record["device"] == "A10" and record["num_requests"] > 0
