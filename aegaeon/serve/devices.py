"""The devices a node is given, checked against this machine before the node claims shared memory or
spawns a worker (aegaeon.serve.node)."""

from __future__ import annotations

from aegaeon.errors import ConfigError


def check_devices(devices: tuple[str, ...]) -> None:
    """Fail before anything starts when a device does not exist on this machine."""
    import torch

    for device in devices:
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ConfigError(
                f"device {device!r} is not a torch device name (cpu, cuda:0, ...)"
            ) from None
        if parsed.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(
                    f"device {device}: this torch build or machine has no CUDA GPU; use --device cpu "
                    f"--num-instances N for virtual CPU instances"
                )
            if (parsed.index or 0) >= torch.cuda.device_count():
                raise ConfigError(
                    f"device {device}: this machine has {torch.cuda.device_count()} GPUs"
                )
        elif parsed.type != "cpu":
            raise ConfigError(f"device {device}: only cpu and cuda devices are supported")
