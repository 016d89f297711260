"""The built wheel installs and runs outside the source tree: extension, shipped profiles, declared deps."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_finds_its_profiles(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
        timeout=600,
    )
    (wheel,) = wheels.glob("aegaeon-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(
            next(n for n in names if n.endswith(".dist-info/METADATA"))
        ).decode()
    for device in ("H100", "H800", "H20", "A100", "A10"):  # the devices in version control
        assert any(
            n.startswith(f"aegaeon/_profiles/{device}/") and n.endswith(".json") for n in names
        )
    assert not any(n.startswith("aegaeon/_profiles/cpu-") for n in names)
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    runtime = [r for r in requires if "extra ==" not in r]
    import torch

    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert f"torch=={release}.*" in runtime
    assert not any(
        r.split(">")[0].split("=")[0] in ("pybind11", "ninja", "matplotlib") for r in runtime
    ), runtime

    # torch and the other dependencies come from this interpreter's site-packages; aegaeon only from the wheel
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    probe = (
        "import aegaeon, aegaeon.native; from aegaeon.profiles import load_device_profiles, profiles_dir; "
        "costs, _ = load_device_profiles('H100'); print(aegaeon.__file__); print(profiles_dir()); "
        "print(len(costs))"
    )
    out = subprocess.run(
        [str(python), "-c", probe],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    assert Path(out[0]).is_relative_to(venv), out
    assert Path(out[1]).is_relative_to(venv) and out[1].endswith("_profiles"), out
    assert int(out[2]) >= 1
