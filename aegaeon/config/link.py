"""The TCP link between nodes: its settings and addresses (the link itself is aegaeon.ipc.tcp)."""

from __future__ import annotations

from dataclasses import dataclass

from aegaeon.errors import LinkError

DEFAULT_MAX_FRAME_BYTES = (
    256 * 2**20
)  # the largest KV handoff of one request that may cross the link
HEARTBEAT_PERIOD = 1.0
DEFAULT_HEARTBEAT_TIMEOUT = 5.0


def parse_address(text: str, what: str, listen: bool = False) -> tuple[str, int]:
    """HOST:PORT; a listening address may use port 0 (any free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 if listen else 1) <= int(port) < 65536:
        raise LinkError(f"{what} {text!r} is not HOST:PORT")
    return host, int(port)


@dataclass(frozen=True)
class LinkConfig:
    token: str
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT

    def __post_init__(self) -> None:
        if len(self.token) < 8:
            raise LinkError(
                "the cluster token must have at least 8 characters: pass --token (or AEGAEON_TOKEN)"
            )
        if self.max_frame_bytes < 2**16 or self.heartbeat_timeout <= HEARTBEAT_PERIOD:
            raise LinkError(
                f"max frame {self.max_frame_bytes} bytes (>= 64 KiB) and heartbeat timeout "
                f"{self.heartbeat_timeout} s (> {HEARTBEAT_PERIOD} s) are out of range"
            )
