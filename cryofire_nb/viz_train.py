"""Training-curve figure of a run (``OUTDIR/training_curve.png``) from its history.

Panels: the reconstruction loss (and KL / pose-distillation loss when present) against
images seen, with the pose-only phase shaded; the loss-disc radius and the spread of the
predicted view directions (1 = over the sphere, 0 = collapsed onto a great circle); and,
when ground truth was given, the median view error and |Spearman| / confusion error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _series(entries: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(e["images_seen"], e[key]) for e in entries if e.get(key) is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pts)
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def training_curve_figure(history: dict, title: str | None = None):
    """Matplotlib figure of ``history`` (:meth:`cryofire_nb.train.monitor.History.to_dict`)."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    train, evals = history.get("train", []), history.get("eval", [])
    n_panels = 3 if evals else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 3.6))
    ax = axes[0]
    for key, label in (("recon", "reconstruction"), ("kl", "KL"), ("pose_loss", "pose distillation")):
        x, y = _series(train, key)
        if len(x):
            ax.plot(x, y, label=label, lw=1.2)
    po = [e["images_seen"] for e in train if e.get("pose_only")]
    if po and max(po) > 0:
        ax.axvspan(0, max(po), color="0.9", zorder=0, label="pose-only phase")
    ax.set_yscale("log")
    ax.set_xlabel("images seen")
    ax.set_ylabel("loss (normalised Hartley MSE)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)

    ax = axes[1]
    x, y = _series(train, "radius_px")
    ax.plot(x, y, color="C0", label="loss disc radius (px)")
    ax.set_xlabel("images seen")
    ax.set_ylabel("radius (px of frequency)", color="C0")
    ax2 = ax.twinx()
    x, y = _series(train, "view_planarity")
    ax2.plot(x, y, color="C3", label="view spread")
    x, y = _series(train, "frac_mirrored")
    ax2.plot(x, y, color="C2", lw=0.8, label="mirrored share")
    ax2.set_ylim(-0.05, 1.05)
    ax2.set_ylabel("view spread (1 sphere, 0 circle) / mirrored share")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7, loc="lower right")

    if evals:
        ax = axes[2]
        x, y = _series(evals, "median_view_error_deg")
        ax.plot(x, y, "o-", color="C0", ms=3, label="median view error")
        ax.axhline(90, color="0.6", lw=0.6, ls=":")  # median angle between independent uniform directions
        ax.set_ylabel("median view error (deg)", color="C0")
        ax.set_xlabel("images seen")
        conf = [(k, lab, col) for k, lab, col in (("spearman_pc1", "|Spearman(PC1, truth)|", "C1"),
                                                  ("confusion_error", "confusion error", "C4"))
                if len(_series(evals, k)[0])]
        if conf:
            ax3 = ax.twinx()
            for key, label, col in conf:
                ax3.plot(*_series(evals, key), "s-", color=col, ms=3, label=label)
            ax3.set_ylim(-0.05, 1.05)
            ax3.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_training_curve(history: dict, path: str | Path, title: str | None = None) -> None:
    """Write the figure as PNG atomically."""
    import matplotlib.pyplot as plt

    from .io._atomic import atomic_path

    fig = training_curve_figure(history, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
