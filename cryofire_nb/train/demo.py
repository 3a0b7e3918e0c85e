"""``cryofire-nb demo``: the whole main job on the bundled demo data, in minutes.

1. simulate ``data_demo/demo_sim.yaml`` (adenylate kinase, continuous open <-> closed
   motion, d = 32, SNR 0.3, CTF, shifts up to 1.5 px) into ``OUT/data`` (skipped when it
   is already there);
2. a known-pose reconstruction (:func:`cryofire_nb.reconstruct.reconstruct` with the true
   poses and CTF) as a sanity anchor: central sections against the true t = 0.5 volume
   and the FSC to it, ``OUT/known_pose_reconstruction.png``;
3. ab initio training (``cryofire-nb train``, the default table method): voxel pose search, pose table
   refined against the conformation-dependent volume, encoder learning z and distilled
   towards the table; a small CPU configuration (:data:`.presets.ABINIT_CPU`,
   time-limited), or the paper's configuration (paper encoder, hypervolume, batch 128)
   when cuda is available;
4. evaluation against the truth (``cryofire-nb evaluate``), and ``OUT/REPORT.md`` with the
   numbers, timings and figure paths.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

DATA_FILES = ("particles.mrcs", "poses.pkl", "ctf.pkl", "conf.pkl", "sim_info.yaml")


@dataclass
class DemoSettings:
    out: Path
    device: str = "auto"
    minutes: float | None = None  # training time limit; None -> 6 (cpu with init_search; 3 without) or 8 (cuda)
    config: Path | None = None  # simulation config; None -> the bundled demo_sim.yaml
    init_search: bool = True  # plain amortised training needs far more images than a CPU demo sees
    seed: int = 0
    progress: bool = True
    timings_s: dict = field(default_factory=dict)


def bundled_config() -> Path:
    path = Path(__file__).resolve().parents[2] / "data_demo" / "demo_sim.yaml"
    if not path.is_file():
        raise InputError(path, "the bundled demo config is not there (package not installed from the repository?)",
                         "pass --config path/to/demo_sim.yaml")
    return path


def simulate_if_needed(s: DemoSettings) -> tuple[Path, bool]:
    from ..simulate import SimConfig, simulate_dataset

    data = s.out / "data"
    if all((data / f).is_file() for f in DATA_FILES):
        return data, False
    config = SimConfig.from_yaml(s.config or bundled_config())
    simulate_dataset(config, data, overwrite=data.exists(), progress=s.progress)
    return data, True


def known_pose_anchor(data: Path, out: Path) -> dict:
    """Backprojection with the true poses; FSC against the true t = 0.5 volume."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..fsc import fsc
    from ..io import read_ctf, read_mrc, read_poses, write_mrc
    from ..io._atomic import atomic_path
    from ..metrics import volume_correlation
    from ..reconstruct import reconstruct

    stack = read_mrc(data / "particles.mrcs")
    images = torch.as_tensor(stack.data)
    d = images.shape[-1]
    poses = read_poses(data / "poses.pkl")
    ctf = read_ctf(data / "ctf.pkl")
    rec = reconstruct(images, torch.as_tensor(poses.rots), torch.as_tensor(poses.shift_px(d)), ctf,
                      pixel_size_angstrom=stack.pixel_size_angstrom)
    ref_name = "vol_path_02.mrc" if (data / "vol_path_02.mrc").is_file() else "vol_state_00.mrc"
    ref = torch.as_tensor(read_mrc(data / ref_name).data).double()
    vol = rec.volume.double()
    f = fsc(vol, ref, stack.pixel_size_angstrom)
    corr = volume_correlation(vol, ref)
    write_mrc(out / "known_pose_volume.mrc", vol.float().numpy(), stack.pixel_size_angstrom)
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.4))
    c = d // 2
    for row, (v, name) in enumerate(((ref, f"truth ({ref_name})"), (vol, "known-pose reconstruction"))):
        v = v.numpy()
        for col, (sec, lab) in enumerate(((v[c], "z = 0"), (v[:, c], "y = 0"), (v[:, :, c], "x = 0"))):
            axes[row, col].imshow(sec, cmap="gray", origin="lower")
            axes[row, col].set_title(f"{name}\nsection {lab}", fontsize=8)
            axes[row, col].axis("off")
    ax = axes[0, 3]
    ax.plot(f.shell_px.numpy() / d, f.fsc.numpy(), label="vs truth")
    ax.plot(rec.fsc.shell_px.numpy() / d, rec.fsc.fsc.numpy(), label="half maps")
    ax.axhline(0.5, color="0.5", lw=0.6, ls="--")
    ax.axhline(0.143, color="0.5", lw=0.6, ls=":")
    ax.set_xlabel("cycles/pixel", fontsize=8)
    ax.set_title("FSC", fontsize=8)
    ax.legend(fontsize=7)
    axes[1, 3].axis("off")
    axes[1, 3].text(0, 0.5, f"correlation {corr:.3f}\nFSC AUC {f.auc:.3f}\n{rec.n_images} particles,\n"
                            "true poses and CTF,\nall conformations", fontsize=9)
    fig.tight_layout()
    png = out / "known_pose_reconstruction.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return {"figure": png.name, "reference": ref_name, "correlation": corr, "fsc_auc": f.auc,
            "fsc_0_5_angstrom": f.at_0_5.resolution_angstrom, "fsc_0_143_angstrom": f.at_0_143.resolution_angstrom}


def train_config(s: DemoSettings, data: Path, cuda: bool):
    """The demo's run: the default pipeline (the table method with the preset for the box
    and the device), or with ``--no-init-search`` the plain amortised recipe."""
    from .config import TrainConfig

    minutes = s.minutes if s.minutes is not None else (8.0 if cuda else (6.0 if s.init_search else 3.0))
    common = dict(particles=str(data / "particles.mrcs"), outdir=str(s.out / "train"), ctf=str(data / "ctf.pkl"),
                  gt_poses=str(data / "poses.pkl"), gt_conf=str(data / "conf.pkl"), time_limit_min=minutes,
                  seed=s.seed, device="cuda" if cuda else "cpu", progress=s.progress,
                  eval_n_images=500, command_line="cryofire-nb demo (internal train call)")
    if s.init_search:
        return TrainConfig(**common, method="table")
    if cuda:  # the paper's configuration
        return TrainConfig(**common, method="amortised", batch_size=128)
    return TrainConfig(**common, method="amortised", encoder="released", encoder_hidden=128, decoder="voxel",
                       batch_size=64, lr=1e-3)


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def write_report(s: DemoSettings, anchor: dict, train_result, evaluation, cfg) -> Path:
    m = evaluation.metrics
    c = m.conformation
    lines = [
        "# cryofire-nb demo report", "",
        f"Data: `data/` (simulated from demo_sim.yaml: {m.n_images} particles, {m.image_size_px} px).", "",
        "## Timings (s)", "",
        *[f"- {k}: {v:.1f}" for k, v in s.timings_s.items()], "",
        "## Known-pose reconstruction (sanity anchor)", "",
        f"True poses and CTF, backprojection of all particles (every conformation) vs `{anchor['reference']}`: "
        f"correlation {anchor['correlation']:.3f}, FSC AUC {anchor['fsc_auc']:.3f}, FSC=0.5 at "
        f"{_fmt(anchor['fsc_0_5_angstrom'], '.1f')} A. Figure: `{anchor['figure']}`.", "",
        "## Ab initio training", "",
        f"Settings: method `{cfg.method}` (preset `{cfg.preset}`), encoder `{cfg.encoder}`, decoder `{cfg.decoder}`, zdim {cfg.zdim}, batch {cfg.batch_size}, "
        f"lr {cfg.lr}, time limit {cfg.time_limit_min} min, device {cfg.device}"
        + (", poses from the voxel search refined against the conformation-dependent volume (pose table, "
           "the default table method)" if cfg.pose_table else ", poses distilled from the voxel search (--init-search)"
           if cfg.init_search else "") + ".",
        f"{train_result.state.step} steps, {train_result.state.images_seen} images at "
        f"{train_result.train_images_per_s:.0f} images/s; stopped by {train_result.stopped_by}. "
        "Curve: `train/training_curve.png`.", "",
        "## Metrics against the truth (all particles)", "",
        f"- median view error after alignment: {m.rotations.view.median_deg:.1f} deg "
        f"(mean {m.rotations.view.mean_deg:.1f}; random poses give about 90)",
        f"- median translation error: {_fmt(None if m.translations is None else m.translations.median_px)} px",
        f"- |Spearman(PC1 of z, true t)|: {_fmt(None if c is None else c.spearman_pc1_conf)}",
    ]
    search = s.out / "train" / "init_search_poses.pkl"
    if cfg.init_search and search.is_file():
        from ..io import read_poses
        from ..metrics import evaluate_run

        p, g = read_poses(search), read_poses(s.out / "data" / "poses.pkl")
        ms = evaluate_run(p.rots, p.trans_frac, g.rots, g.trans_frac, m.image_size_px)
        lines.append(f"- for comparison, the consensus voxel search's poses (`train/init_search_poses.pkl`): median "
                     f"view error {ms.rotations.view.median_deg:.1f} deg, median translation error "
                     f"{_fmt(None if ms.translations is None else ms.translations.median_px)} px")
        enc = s.out / "train" / "encoder_poses.pkl"
        if enc.is_file():
            p = read_poses(enc)
            me = evaluate_run(p.rots, p.trans_frac, g.rots, g.trans_frac, m.image_size_px)
            lines.append(f"- the encoder's own poses (`train/encoder_poses.pkl`, what `infer` gives new particles "
                         f"in one pass; `infer --refine` and `--search` do better): median view error "
                         f"{me.rotations.view.median_deg:.1f} deg, median "
                         f"translation error {_fmt(None if me.translations is None else me.translations.median_px)} px")
    for sv, name in zip(m.volumes or [], evaluation_names(evaluation)):
        lines.append(f"- {name}: correlation {sv.correlation:.3f}, FSC AUC {sv.fsc.auc:.3f}")
    hold = train_result.history.holdout
    if hold:
        h = hold[-1]
        lines.append(f"- the encoder against the pose table, without the truth: median rotation difference "
                     f"{h['held_out_rotation_median_deg']:.1f} deg on particles it never trained on, "
                     f"{h['training_rotation_median_deg']:.1f} deg on training particles")
    lines += ["", "Warnings of the run: " + ("; ".join(train_result.history.warnings) or "none") + "."]
    lines += ["", "Figures: " + ", ".join(f"`eval/{p.name}`" for p in evaluation.figures), "",
              "Reading: the amortised recipe alone is known to collapse its view directions onto a great circle "
              "within CPU-sized budgets (see the view spread in the training curve); a median view error "
              "near 90 deg means the poses are no better than random. With the table method (the default) the run's poses are the "
              "voxel search's, refined against the volume of each particle's conformation (poses.pkl); the "
              "encoder learns z with them and is trained to reproduce them (encoder_poses.pkl).", ""]
    path = s.out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def evaluation_names(evaluation) -> list[str]:
    import json

    data = json.loads(evaluation.metrics_json.read_text())
    return data.get("true_volumes") or []


def run_demo(s: DemoSettings) -> Path:
    from .evaluation import evaluate_outdir
    from .trainer import resolve_device, train

    t0 = time.perf_counter()
    s.out.mkdir(parents=True, exist_ok=True)
    cuda = resolve_device(s.device).type == "cuda"
    data, made = simulate_if_needed(s)
    s.timings_s["simulate" if made else "simulate (skipped, data present)"] = time.perf_counter() - t0
    t = time.perf_counter()
    anchor = known_pose_anchor(data, s.out)
    s.timings_s["known-pose reconstruction"] = time.perf_counter() - t
    t = time.perf_counter()
    cfg = train_config(s, data, cuda)
    result = train(cfg)
    s.timings_s["train (incl. final pass and outputs)"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = evaluate_outdir(s.out / "train", data / "poses.pkl", s.out / "eval", gt_conf=data / "conf.pkl",
                                 gt_vols=data, device="cuda" if cuda else "cpu")
    s.timings_s["evaluate"] = time.perf_counter() - t
    s.timings_s["total"] = time.perf_counter() - t0
    return write_report(s, anchor, result, evaluation, result.config)
