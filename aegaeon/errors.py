"""Exception types of aegaeon, in one place.

Messages name the object, the value and the limit, and say what to do. The C++
extension raises these same classes (see csrc/bindings.cpp), so callers catch
one set of types whichever layer failed. This module imports nothing heavy.
"""


class AegaeonError(Exception):
    """Base class of every error aegaeon raises on purpose."""


class OutOfBlocksError(AegaeonError, MemoryError):
    """No slab has room for a KV block; free or swap out blocks first."""


class InvalidHandleError(AegaeonError, ValueError):
    """A block handle or size the allocator did not hand out or cannot serve."""


class ArenaTooSmallError(AegaeonError, ValueError):
    """The device arena cannot hold what was asked of it."""


class IntegrityError(AegaeonError, AssertionError):
    """An internal consistency check failed: a bug, never bad input."""


class SharedMemoryError(AegaeonError, OSError):
    """A POSIX shared-memory segment or semaphore could not be made or used."""


class ClusterRunningError(SharedMemoryError):
    """Another live process owns the shared-memory namespace of this cluster id."""


class ConfigError(AegaeonError, ValueError):
    """A configuration value, flag or input file is invalid."""


class CheckpointError(AegaeonError, ValueError):
    """A model checkpoint is missing, malformed or of an unsupported kind."""


class RequestError(AegaeonError, ValueError):
    """A request cannot be served as asked (prompt too long, unknown model, ...)."""


class LinkError(AegaeonError):
    """The TCP link between nodes could not be set up or used."""
