"""Evaluate a finished run folder against ground truth (``cryofire-nb evaluate``).

Reads ``OUTDIR/poses.pkl``, ``z.pkl``, ``weights.pt`` and ``config.yaml`` (for ``--ind``),
or, for the output of ``cryofire-nb infer``, its poses and z with the run named in its
``infer.yaml`` (the decoder for volumes, ``--ind`` from the infer call),
the true poses, conformations (continuous ``conf.pkl`` or discrete ``labels.pkl``) and
optionally the true volumes of a simulator folder, and computes
:func:`cryofire_nb.metrics.evaluate_run`. Predicted volumes for the truth's volumes:

* discrete labels, ``vol_state_XX.mrc``: the decoder at the median z of the images of state XX;
* continuous truth: each true volume with a known path position t (``sim_info.yaml``
  entries with ``t``; without it, ``vol_state_XX`` taken as evenly spaced in [0, 1]) is
  matched by the decoder at the median z of the 10 % of images (at least 20) whose true t
  is nearest.

True volumes larger than the run's box are Fourier-cropped to it. Figures (PNG): view-error
histogram, PC1/PC2 of z coloured by the truth, FSC curves (when volumes are given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import InputError
from ..fft import fourier_crop
from ..io import read_latents, read_mrc, read_poses
from ..io._atomic import atomic_path
from ..io.pkl import load_pickles
from ..metrics import RunMetrics, evaluate_run
from .run_model import CryoFireModel, load_weights


@dataclass(frozen=True)
class TrueVolumes:
    volumes: list[np.ndarray]  # real space (d, d, d)
    names: list[str]
    t: list[float] | None  # path position per volume (continuous truth)


@dataclass(frozen=True)
class Evaluation:
    metrics: RunMetrics
    metrics_json: Path
    figures: list[Path]


def _vector(path, n_total: int, ind: np.ndarray | None, what: str) -> np.ndarray:
    arr = np.asarray(load_pickles(path)[0]).reshape(-1)
    return _rows(path, arr, n_total, ind, what)


def _rows(path, arr: np.ndarray, n: int, ind: np.ndarray | None, what: str) -> np.ndarray:
    if ind is not None and arr.shape[0] == n and n != len(ind):
        return arr[ind]
    if arr.shape[0] != (n if ind is None else len(ind)):
        raise InputError(path, f"{what} has {arr.shape[0]} entries but the run has {n} particles",
                         "pass the ground truth of the particles the run was trained on")
    return arr


def read_true_volumes(folder: str | Path, continuous: bool) -> TrueVolumes:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "--gt-vols is not a folder", "pass the simulator's output folder")
    info_path = folder / "sim_info.yaml"
    entries = []
    if info_path.is_file():
        info = yaml.safe_load(info_path.read_text()) or {}
        entries = info.get("volumes", []) or []
    if continuous and any("t" in e for e in entries):
        chosen = [(e["file"], float(e["t"])) for e in entries if "t" in e]
    else:
        files = sorted(p.name for p in folder.glob("vol_state_*.mrc"))
        if not files:
            raise InputError(folder, "holds no vol_state_XX.mrc volumes", "pass the simulator's output folder")
        ts = np.linspace(0.0, 1.0, len(files)) if len(files) > 1 else np.zeros(1)
        chosen = [(f, float(t)) for f, t in zip(files, ts)]
    vols = [np.asarray(read_mrc(folder / f).data, dtype=np.float32) for f, _ in chosen]
    return TrueVolumes(vols, [f for f, _ in chosen], [t for _, t in chosen] if continuous else None)


@torch.no_grad()
def predicted_volumes(model: CryoFireModel, z: np.ndarray, gt_conf: np.ndarray | None, gt_labels: np.ndarray | None,
                      truth: TrueVolumes) -> list[np.ndarray]:
    """One decoder volume per true volume (see the module docstring)."""
    dev = next(model.parameters()).device
    out = []
    for k in range(len(truth.volumes)):
        if model.spec.zdim == 0:
            sel = np.arange(len(z))
        elif gt_labels is not None:
            sel = np.flatnonzero(gt_labels == k)
        else:
            dist = np.abs(gt_conf - truth.t[k])
            n_sel = max(20, len(z) // 10)
            sel = np.argsort(dist, kind="stable")[:n_sel]
        if sel.size == 0:
            sel = np.arange(len(z))
        zk = None if model.spec.zdim == 0 else torch.as_tensor(np.median(z[sel], axis=0), device=dev)
        out.append(model.decoder.eval_volume(zk).float().cpu().numpy())
    return out


def evaluate_outdir(run: str | Path, gt_poses: str | Path, out: str | Path, gt_conf: str | Path | None = None,
                    gt_labels: str | Path | None = None, gt_vols: str | Path | None = None,
                    device: str = "cpu") -> Evaluation:
    run, out = Path(run), Path(out)
    for name in ("poses.pkl", "z.pkl"):
        if not (run / name).is_file():
            raise InputError(run / name, "not found", "pass the output folder of a finished train or infer run")
    model_dir, ind_path = run, None
    if (run / "config.yaml").is_file():  # a train run
        ind_path = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("train", {}).get("ind")
    elif (run / "infer.yaml").is_file():  # an infer output: the model is the run it names
        record = yaml.safe_load((run / "infer.yaml").read_text()) or {}
        model_dir, ind_path = Path(record.get("run", "")), record.get("ind")
    if not (model_dir / "weights.pt").is_file():
        raise InputError(model_dir / "weights.pt", "not found",
                         "pass the output folder of a finished train run, or of an infer run whose train run "
                         "still exists")
    if gt_conf is not None and gt_labels is not None:
        raise InputError(None, "--gt-conf and --gt-labels both given", "pass one of them")
    poses = read_poses(run / "poses.pkl")
    z = read_latents(run / "z.pkl").mu
    n = len(poses)
    ind = None
    if ind_path:
        from ..io import read_indices
        ind = read_indices(ind_path)
    gt = read_poses(gt_poses)
    n_total = len(gt)
    gt_rots = _rows(gt_poses, gt.rots, n_total, ind, "ground-truth pose file")
    gt_trans = None if gt.trans_frac is None else _rows(gt_poses, gt.trans_frac, n_total, ind, "ground-truth pose file")
    if len(gt_rots) != n:
        raise InputError(gt_poses, f"has {len(gt_rots)} poses for the run's {n} particles",
                         "pass the ground truth of the particles the run was trained on")
    conf = None if gt_conf is None else _vector(gt_conf, n_total, ind, "conformation file").astype(np.float64)
    labels = None if gt_labels is None else _vector(gt_labels, n_total, ind, "label file").astype(np.int64)
    model = load_weights(model_dir, device)
    d = model.spec.d
    pred_vols = truth = None
    if gt_vols is not None:
        truth = read_true_volumes(gt_vols, continuous=labels is None)
        if labels is None and conf is None and len(truth.volumes) > 1:
            raise InputError(gt_vols, "several true volumes but no --gt-conf / --gt-labels to match them",
                             "pass the conformation truth too")
        vols = []
        for v in truth.volumes:
            if v.shape[-1] != d:
                v = fourier_crop(torch.as_tensor(v, dtype=torch.float64), d, ndim=3).float().numpy()
            vols.append(v)
        truth = TrueVolumes(vols, truth.names, truth.t)
        pred_vols = predicted_volumes(model, z, conf, labels, truth)
    metrics = evaluate_run(poses.rots, poses.trans_frac, gt_rots, gt_trans, d,
                           z=z if z.shape[1] > 0 else None, gt_conf=conf, gt_labels=labels,
                           pred_volumes=pred_vols, gt_volumes=None if truth is None else truth.volumes,
                           pixel_size_angstrom=model.spec.pixel_size_angstrom)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"run": str(run), **metrics.to_dict(), "summary": metrics.summary_lines(),
               "true_volumes": None if truth is None else truth.names}
    metrics_json = out / "metrics.json"
    with atomic_path(metrics_json) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
    figures = write_figures(out, metrics, z, conf, labels, truth)
    return Evaluation(metrics, metrics_json, figures)


def write_figures(out: Path, m: RunMetrics, z: np.ndarray, conf, labels, truth: TrueVolumes | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = []

    def save(fig, name):
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.hist(m.rotations.view_deg, bins=np.linspace(0, 180, 37), color="C0")
    ax.axvline(m.rotations.view.median_deg, color="k", ls="--", lw=1,
               label=f"median {m.rotations.view.median_deg:.1f} deg")
    ax.set_xlabel("view-direction error after alignment (deg)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, "view_error_hist.png")

    if z.shape[1] > 0:
        zc = z - z.mean(0)
        _, _, vt = np.linalg.svd(zc, full_matrices=False)
        pcs = zc @ vt[:2].T if vt.shape[0] >= 2 else np.concatenate([zc @ vt[:1].T, np.zeros((len(z), 1))], 1)
        color = conf if conf is not None else labels
        fig, ax = plt.subplots(figsize=(4.6, 3.8))
        sc = ax.scatter(pcs[:, 0], pcs[:, 1], c=color, s=4, cmap="viridis" if color is not None else None)
        # (a colour map without colours makes matplotlib warn, which the CLI would show the user)
        if color is not None:
            fig.colorbar(sc, ax=ax, label="true t" if conf is not None else "true state")
        ax.set_xlabel("PC1 of z")
        ax.set_ylabel("PC2 of z")
        fig.tight_layout()
        save(fig, "latent_pca.png")

    if m.volumes:
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for s, name in zip(m.volumes, truth.names if truth else []):
            f = s.fsc
            ax.plot(f.shell_px.numpy() / f.d, f.fsc.numpy(), label=f"{name} (AUC {f.auc:.2f})")
        ax.axhline(0.5, color="0.5", lw=0.6, ls="--")
        ax.axhline(0.143, color="0.5", lw=0.6, ls=":")
        ax.set_xlabel("frequency (cycles/pixel)")
        ax.set_ylabel("FSC vs truth")
        ax.set_ylim(-0.2, 1.02)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save(fig, "fsc.png")
    return paths
