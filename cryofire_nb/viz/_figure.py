"""Creating and saving figures headless.

Matplotlib figures are made through pyplot (so Jupyter's inline display is set up) and
closed at once: pyplot forgets them, nothing is shown as a side effect, and a notebook
shows a figure only when a cell returns or ``display``-s it. Without a display (no
``$DISPLAY`` / ``$WAYLAND_DISPLAY`` on Linux) a GUI backend is swapped for Agg.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import InputError

_GUI_BACKENDS = {"tkagg", "tkcairo", "qtagg", "qtcairo", "qt5agg", "qt5cairo", "gtk3agg", "gtk3cairo",
                 "gtk4agg", "gtk4cairo", "wxagg", "wxcairo", "macosx"}


def _headless() -> bool:
    if sys.platform.startswith("linux"):
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False


def new_figure(figsize=(6.0, 4.0), **kwargs):
    """A matplotlib ``Figure`` detached from pyplot (closed at once, drawable and savable)."""
    import matplotlib

    backend = matplotlib.rcParams._get_backend_or_none()  # None: not resolved yet (auto -> Agg headless)
    if backend is not None and backend.lower() in _GUI_BACKENDS and _headless():
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize, **kwargs)
    plt.close(fig)
    return fig


def is_plotly(fig) -> bool:
    return type(fig).__module__.startswith("plotly")


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Save a figure atomically. Matplotlib: any format matplotlib knows from the suffix
    (``.png``, ``.pdf``, ``.svg``). Plotly: ``.html`` (self-contained) or ``.json``; a
    plotly PNG would need kaleido and a browser, so save the static matplotlib version."""
    from ..io._atomic import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if is_plotly(fig):
        if suffix not in (".html", ".json"):
            raise InputError(path, f"a plotly figure cannot be saved as '{suffix}' here",
                             "save it as .html or .json, or save the matplotlib version as .png")
        with atomic_path(path) as tmp:
            if suffix == ".html":
                fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
            else:
                tmp.write_text(fig.to_json())
        return path
    fmt = suffix.lstrip(".") or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise InputError(path, f"matplotlib cannot write '{suffix}' files", "name the file .png, .pdf or .svg")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return path


def finish_axes(fig, ax, xlabel: str, ylabel: str, title: str | None = None, legend: dict | None = None):
    """The common end of a one-panel figure: axis labels, an optional legend (``legend``
    holds its keyword arguments), an optional title, tight layout. Returns ``fig``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend is not None:
        ax.legend(**legend)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
