"""The matplotlib canvas of metcli's figures: Agg, chosen per figure.

Importing this module imports no matplotlib and changes no global backend.
"""

from __future__ import annotations

from pathlib import Path

DPI = 120


def agg_figure(width: float, height: float, layout: str | None = None):
    """A matplotlib Figure (inches) on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, target: Path) -> None:
    """Write ``figure`` as a PNG without a Software tag (the same figure gives the same bytes)."""
    figure.savefig(str(target), format="png", dpi=DPI, metadata={"Software": None})
