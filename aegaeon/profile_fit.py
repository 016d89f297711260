"""Fitting the measured tables of a device (`aegaeon profile fit`): one profile per known model, with the
device's host-link figures."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from aegaeon.config import MEASURED_MODELS
from aegaeon.profiles import H100_LINK, build_profile, read_measured_table, write_profile
from aegaeon.sched.cost import LinkCost

log = logging.getLogger(__name__)

# The H800 (the paper's testbed) is an H100 with less NVLink bandwidth between GPUs: the same 80 GB and the
# same PCIe 5.0 x16 host link, so the same link figures. The others' host links are stated, not measured
# here (no such GPU has been lent): the H20 (96 GB) has the H100's PCIe 5.0 x16, so its figure; the A100
# (80 GB) and the A10 (24 GB) have PCIe 4.0 x16, half the lanes' rate, so half the H100's measured-style
# 55 GB/s. Shares of the link (switch, swap) are the H100's, as the artifact plans with the same constants.
H800_LINK = H100_LINK
H20_LINK = replace(H100_LINK, device_memory_bytes=96 * 2**30)
A100_LINK = replace(H100_LINK, h2d_bandwidth=27.5e9)
A10_LINK = replace(H100_LINK, h2d_bandwidth=27.5e9, device_memory_bytes=24 * 2**30)
DEVICE_LINKS = {
    "H100": H100_LINK,
    "H800": H800_LINK,
    "H20": H20_LINK,
    "A100": A100_LINK,
    "A10": A10_LINK,
}


def fit_directory(
    raw_root: Path, device: str, out_dir: Path, link: LinkCost | None = None
) -> list[Path]:
    """Fits every known model found under raw_root/<model>/ and writes its profile; the link figures are
    the device's (DEVICE_LINKS) unless given."""
    if link is None:
        if device not in DEVICE_LINKS:
            log.warning(
                "no host-link figures for device %r (known: %s): using the H100's; add the device's to "
                "DEVICE_LINKS in aegaeon/profile_fit.py",
                device,
                sorted(DEVICE_LINKS),
            )
        link = DEVICE_LINKS.get(device, H100_LINK)
    written = []
    for model_dir in sorted(p for p in Path(raw_root).iterdir() if p.is_dir()):
        spec = MEASURED_MODELS.get(model_dir.name)
        if spec is None:
            log.warning("skipping %s: no architecture known for it", model_dir.name)
            continue
        written.append(
            write_profile(
                build_profile(device, spec, read_measured_table(model_dir), link), out_dir
            )
        )
    return written
