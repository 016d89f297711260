"""The headline table (`aegaeon bench headline`) and the paper's workload grid."""

import json

from aegaeon.bench.headline import headline, reach, render_headline
from aegaeon.workload import paper_grid


def _result(policy, n, ours, paper, **extra):
    return {
        "policy": policy,
        "num_models": n,
        "arrival_rate": 0.1,
        "inlen_scale": 1.0,
        "outlen_scale": 1.0,
        "ttft_slo": 10.0,
        "tpot_slo": 0.1,
        "slo_attainment": ours,
        "slo_attainment_paper": paper,
        "source": "sim",
        "variant": "",
        **extra,
    }


def test_reach_is_the_last_point_before_the_first_miss():
    assert reach({16: 0.95, 20: 0.85, 24: 0.95}) == (16, False)
    assert reach({16: 0.95, 20: 0.91}) == (20, True)
    assert reach({16: 0.5}) == (None, False)


def test_headline_reports_each_systems_reach_and_aegaeons_ratio_by_both_scorers(tmp_path):
    rows = [
        _result("aegaeon", 16, 1.0, 1.0),
        _result("aegaeon", 20, 0.95, 0.97),
        _result("aegaeon", 24, 0.91, 0.89),
        _result("sllm-ae", 16, 0.95, 0.99),
        _result("sllm-ae", 20, 0.85, 0.92),
        _result("sllm-ae", 24, 0.95, 0.5),
        _result("sllm-ae", 24, 0.0, 0.0, variant="projlat"),  # variants are left out
    ]
    for i, row in enumerate(rows):
        (tmp_path / f"{i}.json").write_text(json.dumps(row))
    lines = headline(tmp_path, ["0.1"])
    ours, paper = lines
    assert ours.reach == {"aegaeon": 24, "sllm-ae": 16} and ours.tops["aegaeon"]
    assert paper.reach == {"aegaeon": 20, "sllm-ae": 20} and not paper.tops["aegaeon"]
    text = render_headline(lines)
    assert "sllm-ae >=1.50x" in text and "sllm-ae 1.00x" in text


def test_the_paper_grid_is_the_artifacts_234_files():
    grid = paper_grid()
    assert len(grid) == 234 and len({spec.filename for spec in grid}) == 234
    sweep = sorted(
        s.arrival_rate for s in grid if s.num_models == 40 and s.inlen_scale == s.outlen_scale == 1
    )
    assert sweep == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7]
    assert {s.duration for s in grid if s.arrival_rate == 0.1} == {120.0}
    assert {s.duration for s in grid if s.arrival_rate != 0.1} == {60.0}
