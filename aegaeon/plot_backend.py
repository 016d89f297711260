"""matplotlib, which only the plot commands need: it is the optional extra `plot`, asked for by name."""

from __future__ import annotations

from aegaeon.errors import ConfigError


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; a ConfigError naming the extra when it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            'plotting needs matplotlib: pip install "aegaeon[plot]" (or pip install matplotlib)'
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
