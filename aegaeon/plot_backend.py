"""matplotlib, which only the plot commands need: it is the optional extra `plot`, asked for by name."""

from __future__ import annotations

from pathlib import Path

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


DPI = 200


def outside_legend(ax, fontsize: int = 7) -> None:
    """The legend to the right of the axes, so it never covers a curve."""
    ax.legend(
        fontsize=fontsize,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )


def save_figure(fig, stem: Path) -> list[Path]:
    """`stem`.pdf and `stem`.png (200 dpi), trimmed to what is drawn (legends outside the axes included)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in ("pdf", "png")]
    for path in paths:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return paths
