"""The GPU bring-up script's CPU dry run: every stage's code path runs here, so that a mistake costs no
device time (benchmarks/gpu/bringup.sh)."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_bringup_dry_run_passes_every_stage_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", "benchmarks/gpu/bringup.sh", "--device", "cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    stages = results["stages"]
    assert done.returncode == 0, {k: v.get("error") for k, v in stages.items() if not v["ok"]}
    assert set(stages) == {"models", "tests", "bandwidth", "switch", "swap", "decode", "node"}
    assert all(stage["ok"] for stage in stages.values())
    assert stages["switch"]["bytes"] > 0 and stages["decode"]["batch8"]["step_s"] > 0
    assert stages["node"]["requests"] == 6
    assert "stage node: ok" in (tmp_path / "summary.txt").read_text()
