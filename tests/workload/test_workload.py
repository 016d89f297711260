"""Workload generator and loader: format, determinism, lengths, bad files."""

from pathlib import Path

import numpy as np
import pytest

from aegaeon.config import PAPER_MIX, PAPER_MODELS
from aegaeon.errors import ConfigError
from aegaeon.workload import (
    MIN_OUTPUT_TOKENS,
    WorkloadSpec,
    format_time,
    generate,
    load_workload,
    parse_time,
    write_workload,
)

PAPER_FILE = Path(__file__).resolve().parents[1] / "data" / "synth-16-0.1-1.0-1.0.csv"


def test_the_papers_workload_file_loads_unchanged(tmp_path):
    requests = load_workload(PAPER_FILE)
    assert len(requests) == 156
    assert (
        requests[0].arrival,
        requests[0].model,
        requests[0].input_len,
        requests[0].output_len,
    ) == (0.418, "synth_model_08", 168, 416)
    write_workload(tmp_path / "copy.csv", requests)
    assert (tmp_path / "copy.csv").read_text() == PAPER_FILE.read_text()


def test_file_name_follows_the_papers_pattern():
    assert WorkloadSpec(8, 0.1, 60).filename == "synth-8-0.1-1.0-1.0.csv"
    assert WorkloadSpec(40, 0.55, 60, 2.0, 0.5).filename == "synth-40-0.55-2.0-0.5.csv"
    with pytest.raises(
        ConfigError, match="--inlen-scale 0.25: workload file names keep one decimal"
    ):
        WorkloadSpec(
            8, 0.1, 60, 0.25
        ).filename  # would share synth-8-0.1-0.2-1.0.csv with scale 0.2


def test_generation_is_deterministic_per_seed_and_models_have_their_own_streams():
    a = generate(WorkloadSpec(8, 0.2, 200, seed=3))
    assert a == generate(WorkloadSpec(8, 0.2, 200, seed=3))
    assert a != generate(WorkloadSpec(8, 0.2, 200, seed=4))
    more = generate(WorkloadSpec(9, 0.2, 200, seed=3))

    def strip(reqs):
        return [(r.model, r.arrival, r.input_len) for r in reqs if r.model != "synth_model_08"]

    assert strip(more) == strip(a)


def test_arrivals_are_poisson_at_the_rate_per_model():
    reqs = generate(WorkloadSpec(20, 0.5, 400, seed=1))
    per_model = np.bincount([int(r.model[-2:]) for r in reqs])
    assert per_model.mean() == pytest.approx(0.5 * 400, rel=0.1)
    gaps = np.diff([r.arrival for r in reqs if r.model == "synth_model_00"])
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.2)  # exponential: CV = 1
    assert all(0 <= r.arrival < 400 for r in reqs)


def test_lengths_follow_sharegpt_scaled_and_capped():
    base = generate(WorkloadSpec(10, 0.5, 400, seed=2))
    scaled = generate(WorkloadSpec(10, 0.5, 400, inlen_scale=2.0, outlen_scale=2.0, seed=2))
    assert 500 < np.mean([r.input_len for r in base]) < 900
    assert 200 < np.mean([r.output_len for r in base]) < 400
    assert np.mean([r.output_len for r in scaled]) > 1.8 * np.mean([r.output_len for r in base])
    for r in base + scaled:
        context = PAPER_MODELS[PAPER_MIX[int(r.model[-2:]) % 10]].max_context
        assert r.output_len >= MIN_OUTPUT_TOKENS
        assert r.input_len >= 1 and r.input_len + r.output_len <= context


def test_model_mix_maps_index_to_the_papers_models():
    reqs = generate(WorkloadSpec(10, 1.0, 200, seed=5))
    yi_or_llama = {r.model for r in reqs if r.input_len + r.output_len > 4096}
    assert yi_or_llama <= {
        f"synth_model_0{i}" for i in range(6)
    }  # only Qwen has a context above 4096


def test_time_format_round_trips():
    assert format_time(3725.0456) == "01:02:05.046"
    assert parse_time("01:02:05.046") == pytest.approx(3725.046)
    with pytest.raises(ValueError):
        parse_time("5.0")


@pytest.mark.parametrize(
    "body,message",
    [
        ("Request Time,Model Name,Input Length\n00:00:01.000,m,1\n", "header"),
        (
            "Request Time,Model Name,Input Length,Output Length\n00:00:01.000,m,-3,4\n",
            ":2: lengths",
        ),
        (
            "Request Time,Model Name,Input Length,Output Length\n00:00:02.000,m,3,4\n00:00:01.000,m,3,4\n",
            ":3: time",
        ),
        ("Request Time,Model Name,Input Length,Output Length\n00:00:01.000,m,x,4\n", ":2:"),
        ("Request Time,Model Name,Input Length,Output Length\n", "no requests"),
        (
            "Request Time,Model Name,Input Length,Output Length\n00:00:01.000,m,3\n",
            "expected 4 columns",
        ),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_workload(path)


def test_bad_specs_are_rejected():
    with pytest.raises(ConfigError):
        WorkloadSpec(0, 0.1, 10)
    with pytest.raises(ConfigError):
        WorkloadSpec(4, -0.1, 10)
    with pytest.raises(ConfigError, match="unknown models"):
        WorkloadSpec(4, 0.1, 10, mix=("gpt-9",))
