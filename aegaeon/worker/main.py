"""Worker process entry point."""

from __future__ import annotations

import logging

import torch

from aegaeon.worker.decode import DecodeWorker
from aegaeon.worker.prefill import PrefillWorker
from aegaeon.worker.spec import WorkerSpec

ROLES = {"prefill": PrefillWorker, "decode": DecodeWorker}


def worker_main(spec: WorkerSpec) -> None:
    """Serve until a Shutdown message arrives or the node process is gone."""
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s w{spec.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    torch.set_num_threads(spec.threads)
    worker = ROLES[spec.role](spec)
    try:
        worker.serve()
    finally:
        worker.close()
