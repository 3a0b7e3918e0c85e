"""Curves: Fourier shell correlation with the 0.5 / 0.143 thresholds, and training
losses against the number of images seen.

For the full figure of a training run (losses, loss-disc radius, view spread, metrics
against ground truth) see :func:`cryofire_nb.viz_train.training_curve_figure`.
"""

from __future__ import annotations

import numpy as np

from ._figure import finish_axes, new_figure


def _fsc_xy(curve, use_angstrom: bool) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(curve, "fsc"):  # cryofire_nb.fsc.FSCResult
        x = curve.frequency_per_angstrom if use_angstrom else curve.frequency_per_px
        return np.asarray(x, dtype=np.float64), np.asarray(curve.fsc, dtype=np.float64)
    freq, fsc = curve
    return np.asarray(freq, dtype=np.float64), np.asarray(fsc, dtype=np.float64)


def fsc_curves(curves, labels=None, title: str | None = None):
    """FSC curve(s) with dashed lines at 0.5 and 0.143; one axes.

    ``curves``: an :class:`cryofire_nb.fsc.FSCResult`, or a list of them, or of
    ``(frequency, fsc)`` pairs. The x axis is 1/Angstrom when every FSCResult has a pixel
    size, else cycles/pixel (pairs are plotted as given). Legend entries give the 0.143
    resolution where the curve crosses it.
    """
    if hasattr(curves, "fsc") or (isinstance(curves, tuple) and len(curves) == 2 and np.ndim(curves[0]) == 1):
        curves = [curves]
    curves = list(curves)
    if labels is not None and len(labels) != len(curves):
        raise ValueError(f"{len(labels)} labels for {len(curves)} curves")
    results = [c for c in curves if hasattr(c, "fsc")]
    use_angstrom = bool(results) and all(c.pixel_size_angstrom for c in results)
    fig = new_figure(figsize=(5.6, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for i, c in enumerate(curves):
        x, y = _fsc_xy(c, use_angstrom)
        label = f"curve {i}" if labels is None else str(labels[i])
        if hasattr(c, "at_0_143") and c.at_0_143.crossed:
            res = c.at_0_143.resolution_angstrom
            label += f" ({res:.1f} A at 0.143)" if np.isfinite(res) else f" ({c.at_0_143.frequency_px:.1f} px at 0.143)"
        ax.plot(x, y, lw=1.3, label=label)
    for t, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(t, color="0.4", lw=0.8, ls=style, label=f"FSC = {t}")
    ax.set_ylim(-0.1, 1.05)
    return finish_axes(fig, ax, "spatial frequency (1/Angstrom)" if use_angstrom else "spatial frequency (cycles/pixel)",
                       "FSC", title, legend=dict(fontsize=7))


def training_curves(history, keys=("loss",), x: str = "images_seen", log_y: bool = True,
                    separate: bool = False, title: str | None = None):
    """Values ``keys`` of a training history against ``x`` (default images seen).

    ``history``: a list of dicts (one per logging step, e.g. ``History.train``), or a
    ``History`` / its ``to_dict()`` (its ``train`` list is used). Entries without a key
    (or with None) are skipped. One axes, or one per key when ``separate``.
    """
    entries = history.get("train", []) if isinstance(history, dict) else getattr(history, "train", history)
    entries = list(entries)
    if not entries:
        raise ValueError("the history is empty")
    available = sorted({k for e in entries for k in e})
    missing = [k for k in (x, *keys) if k not in available]
    if missing:
        raise ValueError(f"history has no {missing}; it has {available}")
    n_axes = len(keys) if separate else 1
    fig = new_figure(figsize=(4.6 * n_axes, 3.4))
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    for i, key in enumerate(keys):
        pts = [(e[x], e[key]) for e in entries if e.get(key) is not None and e.get(x) is not None]
        xs, ys = (np.asarray(v, dtype=np.float64) for v in zip(*pts)) if pts else (np.zeros(0), np.zeros(0))
        ax = axes[i if separate else 0]
        ax.plot(xs, ys, lw=1.2, label=key.replace("_", " "), color=f"C{i}")
        ax.set_xlabel(x.replace("_", " "))
        if log_y and ys.size and (ys > 0).all():
            ax.set_yscale("log")
        if separate:
            ax.set_ylabel(key.replace("_", " "))
    if not separate:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def metric_curves(curves: dict, xlabel: str = "images seen", ylabel: str = "value", title: str | None = None,
                  log_y: bool = False, hline: float | None = None, hline_label: str | None = None,
                  marker: str = "o"):
    """Several metric-vs-x curves in one axes, e.g. the confusion error against images
    seen for a few SNRs: ``curves`` maps a label to ``(x, y)`` (equal-length sequences).
    ``hline``: a dotted reference line (a target), labelled ``hline_label``."""
    if not curves:
        raise ValueError("no curves given")
    fig = new_figure(figsize=(5.6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        if xs.shape != ys.shape:
            raise ValueError(f"curve {label!r}: x {xs.shape} and y {ys.shape} differ")
        ax.plot(xs, ys, marker=marker, ms=3, lw=1.2, color=f"C{i % 10}", label=str(label))
    if hline is not None:
        ax.axhline(hline, color="0.3", ls=":", lw=1.0, label=hline_label)
    if log_y:
        ax.set_yscale("log")
    return finish_axes(fig, ax, xlabel, ylabel, title, legend=dict(fontsize=7))
