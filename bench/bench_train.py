"""Training throughput and early quality under one wall-clock budget: ``cryofire-nb train``
(+ ``infer``) against cryoDRGN 4.3.1's ``abinit`` (cryoDRGN-AI), ``abinit_het_old``
(cryoDRGN2) and ``train_vae`` (known poses), on one simulated dataset and one machine.

Dataset: ``cryofire-nb simulate data_demo/adk_continuous_d32.yaml --n-particles N``
(adenylate kinase, continuous open <-> closed motion, D = 32, SNR 0.3, CTF, shifts up to
1.5 px; N = 10,000 by default), written once to ``OUT/data_nN`` and reused; a held-out
set (other seed) for ``cryofire-nb infer``. All tools read the same cryoDRGN-format files
(``particles.mrcs``, ``ctf.pkl``, ``poses.pkl``).

Each training tool is launched with a budget of ``--minutes`` of wall time, counted from
process start (start-up and data loading included):

* ours: ``cryofire-nb train`` with the demo's CPU configuration (``cryofire_nb/train/demo.py``:
  released encoder, width 128, voxel decoder, batch 64, lr 1e-3, zdim 8) and
  ``--time-limit MINUTES`` (its limit includes writing the outputs); ``--init-search`` adds
  a second row with the voxel pose search first (the demo's optional mode). Then
  ``cryofire-nb infer`` on the training particles and on the held-out set.
* cryoDRGN: the tools' defaults, except what has to be sized to the budget: the number of
  epochs (``-n``), the pretraining images (``abinit --n-imgs-pretrain``, ``abinit_het_old
  --pretrain``: their 10,000-image defaults alone take longer than a few CPU minutes) and,
  for abinit, the pose-search epochs. The sizes come from planning rates (``PLAN_RATES``,
  measured on the 2-core development machine); ``--checkpoint 1`` so that every finished
  epoch writes its poses / z, ``--log-interval`` = one batch so progress is fine-grained,
  ``--no-analysis``, ``abinit --num-workers 0`` (no loader processes competing for the two
  cores), ``--ctf`` always (abinit crashes without it). A tool still running at the budget
  gets SIGINT (then SIGTERM, SIGKILL) to its process group.
* ``--cryodrgn-n K`` gives the cryoDRGN tools only the first K particles (``--ind``), so
  that an epoch, and hence a pose / z file, can finish within a small budget; metrics are
  then over those K particles.

Measured, per tool:

* training images/s: images processed / training time. cryoDRGN: each log line is
  time-stamped on arrival (the logs carry the per-epoch image counter); the time runs from
  the "training starts" line to the stop at the budget (time spent on a batch unfinished
  then counts) or, for a run that finished, to its last progress line. Phases
  (pretraining, pose search, SGD / pose reuse) are rated separately too; a phase with no
  finished batch at the budget gets an upper bound ("<"). Ours: ``images seen /
  training-loop seconds`` as printed by ``cryofire-nb train``. Also images per CPU-second
  (the rate divided by the run's mean CPU share, user + sys of the process tree over wall
  time), which is less sensitive to other load on the machine, and the mean 1-min load
  average during the run.
* ratios ours / theirs of the training images/s (and of images per CPU-s).
* from the newest pose / z files written by the budget: median view-direction error after
  global alignment (``cryofire_nb.metrics.align_poses`` with the hand test, then
  ``rotation_errors``) and |Spearman(PC1 of z, true conformation)|
  (``cryofire_nb.metrics.spearman_pc1``).

Usage::

    .venv/bin/python bench/bench_train.py [--n 10000] [--minutes 3] [--init-search]
        [--tools ours,abinit,abinit_het_old,train_vae] [--cryodrgn-n K] [-o OUT]

Needs ``.venv-cryodrgn`` for the cryoDRGN tools (``make cryodrgn-venv``). Prints a table
and writes ``OUT/bench_train.json`` and ``OUT/bench_train.md`` (OUT defaults to
``bench/out/bench_train_n{N}_m{MINUTES}``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import re
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "data_demo" / "adk_continuous_d32.yaml"
OURS = REPO / ".venv" / "bin" / "cryofire-nb"
CRYODRGN = REPO / ".venv-cryodrgn" / "bin" / "cryodrgn"
# The commands that run each program (--ours-cmd / --cryodrgn-cmd replace them, e.g. on a GPU
# machine whose own Python holds CUDA torch: "python3 -m cryofire_nb").
COMMANDS = {"ours": [str(OURS)], "cryodrgn": [str(CRYODRGN)]}
CRYODRGN_TOOLS = ("abinit", "abinit_het_old", "train_vae")
ALL_TOOLS = ("ours", "ours_search", *CRYODRGN_TOOLS)
LABELS = {"ours": "cryofire-nb train", "ours_search": "cryofire-nb train --init-search",
          "abinit": "cryodrgn abinit", "abinit_het_old": "cryodrgn abinit_het_old",
          "train_vae": "cryodrgn train_vae (known poses)"}
# Demo CPU configuration (cryofire_nb/train/demo.py, train_config without cuda).
OURS_TRAIN_FLAGS = ["--encoder", "released", "--encoder-hidden", "128", "--decoder", "voxel",
                    "-b", "64", "--lr", "1e-3", "--zdim", "8"]
# Demo GPU configuration (train_config with cuda): the paper's encoder and hypervolume
# decoder, bf16 autocast (the default on cuda).
OURS_TRAIN_FLAGS_GPU = ["--encoder", "paper", "--decoder", "hypervolume", "-b", "128", "--lr", "1e-4",
                        "--zdim", "8", "--device", "cuda"]
ZDIM = 8
# Planning rates, images/s at D = 32 on the 2-core development machine (measured with its
# other load, load average ~7): they only size epochs and pretraining; runs stop at the
# budget whatever they are. Scaled by (32 / D)^2 for other box sizes.
PLAN_RATES = {
    "abinit": {"pretrain": 18.0, "pose_search": 0.08, "sgd": 18.0},
    "abinit_het_old": {"pretrain": 27.0, "pose_search": 0.15, "train": 20.0},
    "train_vae": {"train": 5.5},
}
# On a GPU (--device cuda): images/s at D = 64, scaled by (64 / D)^2. abinit's pose search
# and train_vae: H200 figures reported for cryoDRGN 4.3.1 (< 70 and about 1,300 img/s); abinit's pretraining:
# 126 img/s measured at D = 128 on an H200 here, scaled; the rest are guesses of the same
# order. Only the sizing depends on them.
PLAN_RATES_GPU = {
    "abinit": {"pretrain": 500.0, "pose_search": 70.0, "sgd": 1300.0},
    "abinit_het_old": {"pretrain": 1300.0, "pose_search": 50.0, "train": 1300.0},
    "train_vae": {"train": 1300.0},
}
STARTUP_S = 15.0  # imports, data loading, model construction
# Epochs are planned for HEADROOM times the budget: a less loaded machine runs faster than
# the planning rates, and the stop at the budget (with a pose / z file per finished epoch)
# cuts the rest. No schedule of these tools depends on the total number of epochs.
HEADROOM = 2.0
BATCH = {"abinit": {"pretrain": 64, "pose_search": 16, "sgd": 128},
         "abinit_het_old": {"pretrain": 16, "pose_search": 16, "train": 16},
         "train_vae": {"train": 16}}  # the tools' default batch sizes


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    cmd: list[str]
    log: str
    wall_s: float
    cpu_s: float
    returncode: int | None
    killed_at_budget: bool
    load_avg_mean: float
    lines: list[tuple[float, str]] = field(repr=False)  # (seconds since launch, line)
    t_stop: float | None = None  # when the stop signal went out (seconds since launch)
    launched_at: float = 0.0  # time.time() at launch

    @property
    def stopped_at(self) -> float | None:
        """time.time() of the stop signal (None: the run ended by itself)."""
        return None if self.t_stop is None else self.launched_at + self.t_stop

    def lines_before_stop(self) -> list[tuple[float, str]]:
        """Output up to the stop signal: work finished after the budget does not count."""
        return self.lines if self.t_stop is None else [(t, x) for t, x in self.lines if t <= self.t_stop]


def _load1() -> float:
    return os.getloadavg()[0]


def run_budgeted(cmd: list, log_path: Path, budget_s: float | None, env_extra: dict | None = None) -> Run:
    """Run ``cmd`` in its own process group, time-stamp every output line on arrival and
    stop it at ``budget_s`` seconds after launch (SIGINT, then SIGTERM, then SIGKILL)."""
    cmd = [str(c) for c in cmd]
    print("$", shlex.join(cmd), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", **(env_extra or {}))
    lines: list[tuple[float, str]] = []
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, launched_at = time.monotonic(), time.time()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             env=env, cwd=REPO, start_new_session=True)

        def reader():
            for line in p.stdout:
                lines.append((time.monotonic() - t0, line.rstrip("\n")))
                log.write(line)
                log.flush()  # followable with tail -f
            log.flush()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        loads, killed, t_stop = [_load1()], False, None
        while p.poll() is None:
            elapsed = time.monotonic() - t0
            if budget_s is not None and elapsed >= budget_s:
                killed, t_stop = True, elapsed
                for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                    try:
                        os.killpg(p.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        p.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                break
            try:
                p.wait(timeout=min(5.0, budget_s - elapsed) if budget_s is not None else 5.0)
            except subprocess.TimeoutExpired:
                pass
            loads.append(_load1())
        p.wait()
        wall = time.monotonic() - t0
        th.join(timeout=10)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return Run(cmd, str(log_path), wall, cpu, p.returncode, killed, float(np.mean(loads)), lines, t_stop, launched_at)


# --------------------------------------------------------------------------- log parsing


@dataclass
class Progress:
    """Images processed over time, from a cryoDRGN log. events: (t, phase, cumulative
    images); phase None marks a phase boundary (epoch-end saving, announcements)."""

    t_start: float | None
    events: list[tuple[float, str | None, int]]
    current_phase: str | None  # phase running when the log ended

    @property
    def images(self) -> int:
        return self.events[-1][2] if self.events else 0

    @property
    def t_last(self) -> float | None:
        counted = [t for t, ph, _ in self.events if ph is not None]
        return counted[-1] if counted else None

    def train_seconds(self, end_t: float | None) -> float | None:
        """From the training-start line to ``end_t`` (the stop at the budget) or, for a run
        that finished, to its last progress line."""
        t_end = end_t if end_t is not None else self.t_last
        if self.t_start is None or t_end is None or t_end <= self.t_start:
            return None
        return t_end - self.t_start

    def train_rate(self, end_t: float | None) -> float | None:
        """Images finished per second of training: time spent on a batch unfinished at the
        budget counts (effective throughput within the budget)."""
        sec = self.train_seconds(end_t)
        return None if sec is None else self.images / sec

    def phase_stats(self, end_t: float | None, batch: dict) -> dict:
        """Per phase: images, seconds (between progress lines of that phase) and rate.
        ``end_t``: when the run was stopped (None: it finished); the time since the last
        progress line is then reported as ``unfinished_batch_s``, and a phase with no
        finished batch gets an upper bound on its rate."""
        stats: dict[str, dict] = {}
        prev_t, prev_n = self.t_start, 0
        for t, ph, n in self.events:
            if ph is not None and prev_t is not None:
                s = stats.setdefault(ph, {"images": 0, "seconds": 0.0})
                s["images"] += n - prev_n
                s["seconds"] += t - prev_t
            prev_t, prev_n = t, n
        if end_t is not None and self.current_phase is not None and prev_t is not None:
            s = stats.setdefault(self.current_phase, {"images": 0, "seconds": 0.0})
            s["unfinished_batch_s"] = max(0.0, end_t - prev_t)
        for ph, s in stats.items():
            if s["images"] > 0 and s["seconds"] > 0:
                s["images_per_s"] = s["images"] / s["seconds"]
            elif s.get("unfinished_batch_s", 0) > 0:
                s["images_per_s_below"] = batch.get(ph, 1) / s["unfinished_batch_s"]
        return stats


class _Counter:
    """Cumulative images from per-epoch counters."""

    def __init__(self):
        self.done, self.epoch, self.in_epoch = 0, None, 0

    def update(self, epoch: int, count: int) -> int:
        if epoch != self.epoch:
            self.done += self.in_epoch
            self.epoch, self.in_epoch = epoch, 0
        self.in_epoch = count
        return self.done + self.in_epoch


RE_ABINIT = re.compile(r"# \[Train Epoch: (\d+)/\d+\] \[(\d+)/\d+ particles\]")
RE_HET_PRE = re.compile(r"\[Pretrain Iteration (\d+)\]")
RE_HET = re.compile(r"# \[Train Epoch: (\d+)/\d+\] \[(\d+)/\d+ images\]")
RE_VAE = re.compile(r"# \[Train Epoch: (\d+)/\d+\] \[(\d+)/\d+ particles\]")


def parse_abinit(lines, epochs_pose_search: int) -> Progress:
    announce = {"Will pretrain on": "pretrain", "Will use pose search on": "pose_search",
                "Will use latent optimization": "sgd"}
    t_start, ev, cur, cnt = None, [], None, _Counter()
    for t, line in lines:
        if "--- Training Starts Now ---" in line:
            t_start = t
        elif any(k in line for k in announce):
            ev.append((t, None, ev[-1][2] if ev else 0))
            cur = next(v for k, v in announce.items() if k in line)
        elif "=====>" in line and "Epoch:" in line:
            ev.append((t, None, ev[-1][2] if ev else 0))
        elif m := RE_ABINIT.search(line):
            e = int(m.group(1))
            cur = "pretrain" if e == 0 else ("pose_search" if e <= epochs_pose_search else "sgd")
            ev.append((t, cur, cnt.update(e, int(m.group(2)))))
    return Progress(t_start, ev, cur)


def parse_het_old(lines, pretrain_images: int, ps_freq: int = 5) -> Progress:
    """``pretrain_images``: where pretraining stops (min(--pretrain, N)); the first epoch,
    a pose search, follows it without a log line of its own."""

    def phase(epoch: int) -> str:
        return "pose_search" if ps_freq == 1 or epoch % ps_freq == 1 else "train"

    t_start, ev, cur, cnt = None, [], None, _Counter()
    for t, line in lines:
        if "Using random poses for" in line:
            t_start, cur = t, "pretrain"
        elif m := RE_HET_PRE.search(line):
            ev.append((t, "pretrain", cnt.update(0, int(m.group(1)))))
            if int(m.group(1)) >= pretrain_images:
                cur = phase(1)
        elif m := RE_HET.search(line):
            cur = phase(int(m.group(1)))
            ev.append((t, cur, cnt.update(int(m.group(1)), int(m.group(2)))))
        elif "=====> Epoch:" in line:
            ev.append((t, None, ev[-1][2] if ev else 0))
            cur = phase(int(re.search(r"Epoch: (\d+)", line).group(1)) + 1)
        elif "Using previous iteration poses" in line:
            ev.append((t, None, ev[-1][2] if ev else 0))
            cur = "train"
    return Progress(t_start, ev, cur)


def parse_vae(lines) -> Progress:
    t_start, ev, cur, cnt = None, [], None, _Counter()
    for t, line in lines:
        if "workers for data loading" in line:
            t_start, cur = t, "train"
        elif m := RE_VAE.search(line):
            ev.append((t, "train", cnt.update(int(m.group(1)), int(m.group(2)))))
        elif "=====> Epoch:" in line:
            ev.append((t, None, ev[-1][2] if ev else 0))
    return Progress(t_start, ev, cur)


# --------------------------------------------------------------------------- metrics


def _epoch_files(outdir: Path, stem: str) -> list[tuple[int, Path]]:
    out = []
    for p in outdir.glob(f"{stem}.*.pkl"):
        m = re.fullmatch(rf"{stem}\.(\d+)\.pkl", p.name)
        if m:
            out.append((int(m.group(1)), p))
    final = outdir / f"{stem}.pkl"
    if final.is_file():
        out.append((10 ** 9, final))
    return sorted(out, reverse=True)


def newest_readable(outdir: Path, stem: str, reader, written_before: float | None = None):
    """(label, object) of the newest per-epoch (or final) file that reads and was written
    before ``written_before`` (time.time(); the budget's end); None if none."""
    for epoch, path in _epoch_files(outdir, stem):
        if written_before is not None and path.stat().st_mtime > written_before:
            print(f"  note: {path} was written after the budget; not scored")
            continue
        try:
            return (path.name, reader(path))
        except Exception as err:  # a file cut by the kill: fall back to the previous epoch
            print(f"  note: {path} unreadable ({err}); trying an older one")
    return None


def pose_metrics(pred_rots, gt_rots) -> dict:
    from cryofire_nb.metrics import align_poses, rotation_errors

    al = align_poses(np.asarray(pred_rots, dtype=np.float64), np.asarray(gt_rots, dtype=np.float64))
    err = rotation_errors(al.aligned_rots, np.asarray(gt_rots, dtype=np.float64))
    v = err.view
    return {"median_view_deg": v.median_deg, "mean_view_deg": v.mean_deg, "frac_view_within_10deg":
            v.frac_within_10deg, "frac_view_within_20deg": v.frac_within_20deg,
            "median_geodesic_deg": err.geodesic.median_deg, "hand": al.hand,
            "hand_margin_deg": al.hand_margin_deg}


def z_metrics(z, gt_conf) -> dict:
    from cryofire_nb.metrics import pca_pc1, spearman_pc1

    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if not np.isfinite(z).all():
        return {"error": "z has non-finite values"}
    return {"abs_spearman_pc1": spearman_pc1(z, gt_conf), "pc1_var_ratio": pca_pc1(z).explained_variance_ratio}


def _load(spec, reader, written_before: float | None):
    """``spec``: a file, or (folder, stem) for the newest readable ``stem.E.pkl``."""
    if isinstance(spec, tuple):
        return newest_readable(Path(spec[0]), spec[1], reader, written_before)
    return Path(spec).name, reader(spec)


def score_outputs(poses_file, z_file, truth: dict, ind: np.ndarray | None,
                  written_before: float | None = None) -> dict:
    """Metrics of one tool's pose / z files against the truth (restricted to ``ind``).
    ``poses_file`` / ``z_file``: a path, or (folder, stem) for the newest ``stem.E.pkl``;
    None to skip."""
    from cryofire_nb.io import read_latents, read_poses

    gt_rots, gt_conf = truth["rots"], truth["conf"]
    if ind is not None:
        gt_rots, gt_conf = gt_rots[ind], gt_conf[ind]
    out: dict = {}
    if poses_file is not None:
        got = _load(poses_file, read_poses, written_before)
        out["poses_from"] = None if got is None else got[0]
        if got is not None and len(got[1].rots) != len(gt_rots):
            out["pose_error"] = f"{len(got[1].rots)} poses for {len(gt_rots)} particles"
        elif got is not None:
            out.update(pose_metrics(got[1].rots, gt_rots))
    if z_file is not None:
        got = _load(z_file, read_latents, written_before)
        out["z_from"] = None if got is None else got[0]
        if got is not None and len(got[1].mu) != len(gt_conf):
            out["z_error"] = f"{len(got[1].mu)} latents for {len(gt_conf)} particles"
        elif got is not None:
            out.update(z_metrics(got[1].mu, gt_conf))
    return out


# --------------------------------------------------------------------------- data


def ensure_data(folder: Path, n: int, seed: int | None = None, box: int | None = None) -> Path:
    """Simulate (once) ``n`` particles from the benchmark config into ``folder`` (at
    ``box`` px with the same physical box, when given)."""
    info = folder / "sim_info.yaml"
    if (folder / "particles.mrcs").is_file() and info.is_file() and (folder / "conf.pkl").is_file():
        import yaml

        have = yaml.safe_load(info.read_text()) or {}
        if int(have.get("n_particles", -1)) == n and (box is None or image_size(folder) == box):
            return folder
    cmd = [*COMMANDS["ours"], "simulate", CONFIG, "-o", folder, "--n-particles", str(n), "--overwrite"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if box is not None:
        cmd += ["--box", str(box)]
    print("$", shlex.join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return folder


def load_truth(folder: Path) -> dict:
    from cryofire_nb.io import read_poses
    from cryofire_nb.io.pkl import load_pickles

    conf = np.asarray(load_pickles(folder / "conf.pkl")[0], dtype=np.float64).reshape(-1)
    return {"rots": read_poses(folder / "poses.pkl").rots.astype(np.float64), "conf": conf}


def image_size(folder: Path) -> int:
    from cryofire_nb.io import read_mrc

    return int(read_mrc(folder / "particles.mrcs").data.shape[-1])


# --------------------------------------------------------------------------- plans


def plan_cryodrgn(tool: str, n: int, budget_s: float, d: int, device: str = "cpu") -> tuple[list[str], dict]:
    """Flags sizing ``tool``'s schedule to the budget, and the plan that produced them."""
    rates, d_ref = (PLAN_RATES_GPU, 64.0) if device == "cuda" else (PLAN_RATES, 32.0)
    scale = (d_ref / d) ** 2
    r = {k: v * scale for k, v in rates[tool].items()}
    avail = max(budget_s - STARTUP_S, 1.0)
    plan: dict = {"planning_rates_img_per_s": r, "budget_s": budget_s}
    log = ["--log-interval", "256" if device == "cuda" else "16"]  # a line per few seconds at most
    if tool == "abinit":
        n_pre = int(min(10000, n, max(BATCH[tool]["pretrain"], 0.2 * avail * r["pretrain"])))
        left = HEADROOM * avail - n_pre / r["pretrain"]
        t_hps = n / r["pose_search"]
        n_hps = int(min(3, max(1, left // t_hps)))
        left -= n_hps * t_hps
        n_sgd = int(min(27, max(0, left // (n / r["sgd"])))) if n_hps == 3 else 0
        plan.update(n_imgs_pretrain=n_pre, epochs_pose_search=n_hps, epochs_sgd=n_sgd,
                    planned_pose_search_epoch_s=t_hps)
        flags = ["--n-imgs-pretrain", str(n_pre), "-n", str(n_hps + n_sgd), "--epochs-pose-search", str(n_hps),
                 "--checkpoint", "1", *log] + (["--num-workers", "0"] if device == "cpu" else [])
        plan["epochs_pose_search"] = n_hps
    elif tool == "abinit_het_old":
        n_pre = int(min(10000, n, max(BATCH[tool]["pretrain"], 0.2 * avail * r["pretrain"])))
        n_pre -= n_pre % BATCH[tool]["pretrain"]
        left, epochs = HEADROOM * avail - n_pre / r["pretrain"], 0
        while epochs < 30:
            cost = n / (r["pose_search"] if (epochs + 1) % 5 == 1 else r["train"])
            if epochs >= 1 and cost > left:
                break
            left -= cost
            epochs += 1
        plan.update(pretrain_images=n_pre, epochs=epochs, planned_pose_search_epoch_s=n / r["pose_search"])
        flags = ["--pretrain", str(n_pre), "-n", str(epochs), "--checkpoint", "1", *log]
    else:  # train_vae
        epochs = int(min(20, max(1, HEADROOM * avail // (1.15 * n / r["train"]))))
        plan.update(epochs=epochs, planned_epoch_s=n / r["train"])
        flags = ["-n", str(epochs), "--checkpoint", "1", *log]
    return flags, plan


# --------------------------------------------------------------------------- tools


def per_cpu_s(rate: float | None, run: Run) -> float | None:
    """Training images per CPU-second, approximately: the training rate divided by the
    run's mean CPU share (CPU seconds of the process tree / wall seconds), so that a tool
    that got fewer cycles from a busy machine is not penalised for it."""
    if not rate or run.cpu_s <= 0 or run.wall_s <= 0:
        return None
    return rate / (run.cpu_s / run.wall_s)


RE_TRAINED = re.compile(r"trained (\d+) steps, (\d+) images \((\d+) full epochs\) at ([\d.]+) images/s"
                        r"(?: \(([\d.]+) after the first \d+ steps\))?; stopped by (\w+)")
RE_INFER = re.compile(r"inferred (\d+) images in ([\d.]+) s: ([\d.]+) images/s")


def run_ours(name: str, data: Path, heldout: Path | None, out: Path, minutes: float, truth: dict,
             truth_heldout: dict | None, device: str = "cpu") -> dict:
    run_dir = out / name
    flags = OURS_TRAIN_FLAGS_GPU if device == "cuda" else OURS_TRAIN_FLAGS
    cmd = [*COMMANDS["ours"], "train", data / "particles.mrcs", "--ctf", data / "ctf.pkl", "-o", run_dir,
           *flags, "--time-limit", f"{minutes:g}", "--seed", "0", "--no-progress", "--overwrite"]
    if name == "ours_search":
        cmd.append("--init-search")
    # its --time-limit covers the outputs; the hard stop is only a safety net
    run = run_budgeted(cmd, out / "logs" / f"{name}.log", minutes * 60 + max(60.0, 0.25 * minutes * 60))
    res = {"tool": name, "label": LABELS[name], "cmd": shlex.join(run.cmd), "wall_s": run.wall_s,
           "cpu_s": run.cpu_s, "returncode": run.returncode, "killed_at_budget": run.killed_at_budget,
           "load_avg_mean": run.load_avg_mean, "n_particles": len(truth["conf"]), "log": run.log}
    text = "\n".join(line for _, line in run.lines)
    m = RE_TRAINED.search(text)
    if m is None:
        res["error"] = "no 'trained ...' line in the output (see the log)"
        return res
    res.update(steps=int(m.group(1)), images=int(m.group(2)), full_epochs=int(m.group(3)),
               train_images_per_s=float(m.group(4)), stopped_by=m.group(6),
               steady_images_per_s=float(m.group(5)) if m.group(5) else None)
    res["cpu_share"] = run.cpu_s / run.wall_s
    res["images_per_cpu_s"] = per_cpu_s(res["train_images_per_s"], run)
    res["end_to_end_images_per_s"] = res["images"] / run.wall_s
    res["metrics"] = score_outputs(run_dir / "poses.pkl", run_dir / "z.pkl", truth, None)
    if name == "ours_search" and (run_dir / "init_search_poses.pkl").is_file():
        res["metrics_search_poses"] = score_outputs(run_dir / "init_search_poses.pkl", None, truth, None)
    # inference: training particles (throughput) and held-out particles (throughput + metrics)
    inf = {}
    for tag, folder, tr in (("train_set", data, truth), ("heldout", heldout, truth_heldout)):
        if folder is None:
            continue
        odir = out / f"{name}_infer_{tag}"
        r = run_budgeted([*COMMANDS["ours"], "infer", run_dir, folder / "particles.mrcs", "--ctf",
                          folder / "ctf.pkl", "-o", odir, "--device", device, "--overwrite"],
                         out / "logs" / f"{name}_infer_{tag}.log", None)
        mi = RE_INFER.search("\n".join(line for _, line in r.lines))
        d = {"cmd": shlex.join(r.cmd), "wall_s": r.wall_s, "returncode": r.returncode,
             "load_avg_mean": r.load_avg_mean}
        if mi:
            d.update(images=int(mi.group(1)), seconds=float(mi.group(2)), images_per_s=float(mi.group(3)))
            if tag == "heldout":
                d["metrics"] = score_outputs(odir / "poses.pkl", odir / "z.pkl", tr, None)
        else:
            d["error"] = "no 'inferred ...' line in the output"
        inf[tag] = d
    res["inference"] = inf
    return res


def run_cryodrgn(tool: str, data: Path, out: Path, minutes: float, truth: dict, n_sub: int | None,
                 device: str = "cpu") -> dict:
    n_all = len(truth["conf"])
    n = n_sub if n_sub else n_all
    d = image_size(data)
    flags, plan = plan_cryodrgn(tool, n, minutes * 60, d, device)
    run_dir = out / tool
    if run_dir.exists():  # fresh output folder: stale epoch files must not be scored
        import shutil

        shutil.rmtree(run_dir)
    cmd = [*COMMANDS["cryodrgn"], tool, data / "particles.mrcs", "-o", run_dir, "--ctf", data / "ctf.pkl", "--zdim",
           str(ZDIM), "--no-analysis", "--seed", "0", *flags]
    ind = None
    if n_sub:
        # an index file for all three: abinit's help also offers "--ind K" (first K images),
        # but 4.3.1 makes the number an absolute path and fails ("subset index file ... does
        # not exist")
        ind = np.arange(n_sub)
        ind_pkl = out / f"ind_first_{n_sub}.pkl"
        with open(ind_pkl, "wb") as fh:
            pickle.dump(ind, fh)
        cmd += ["--ind", ind_pkl]
    if tool == "train_vae":
        cmd += ["--poses", data / "poses.pkl"]
    # on a GPU machine a CPU benchmark must keep cryoDRGN off the GPU too
    run = run_budgeted(cmd, out / "logs" / f"{tool}.log", minutes * 60,
                       {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else None)
    res = {"tool": tool, "label": LABELS[tool], "cmd": shlex.join(run.cmd), "plan": plan, "wall_s": run.wall_s,
           "cpu_s": run.cpu_s, "returncode": run.returncode, "killed_at_budget": run.killed_at_budget,
           "load_avg_mean": run.load_avg_mean, "n_particles": n, "log": run.log}
    lines = run.lines_before_stop()
    if tool == "abinit":
        prog = parse_abinit(lines, plan["epochs_pose_search"])
    elif tool == "abinit_het_old":
        prog = parse_het_old(lines, min(plan["pretrain_images"], n - n % BATCH[tool]["pretrain"]))
    else:
        prog = parse_vae(lines)
    tail = [line for _, line in run.lines if "Error" in line or "Traceback" in line]
    if run.returncode not in (0, None) and not run.killed_at_budget:
        res["error"] = f"exit code {run.returncode}: " + (tail[-1] if tail else "see the log")
    end_t = run.t_stop if run.killed_at_budget else None
    res.update(images=prog.images, train_images_per_s=prog.train_rate(end_t), train_seconds=prog.train_seconds(end_t),
               phases=prog.phase_stats(end_t, BATCH[tool]), phase_at_end=prog.current_phase if run.killed_at_budget
               else None)
    res["cpu_share"] = run.cpu_s / run.wall_s
    res["images_per_cpu_s"] = per_cpu_s(res["train_images_per_s"], run)
    res["end_to_end_images_per_s"] = prog.images / run.wall_s
    res["metrics"] = score_outputs(None if tool == "train_vae" else (run_dir, "pose"), (run_dir, "z"), truth, ind,
                                   run.stopped_at)
    return res


# --------------------------------------------------------------------------- report


def _f(x, spec=".1f", na="n/a") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return na
    return format(x, spec)


def pose_search_rate(r: dict) -> tuple[float | None, bool]:
    """A cryoDRGN tool's pose-search images/s and whether it is only an upper bound (no
    finished batch at the budget); (None, False) when it logged no pose search."""
    ph = (r.get("phases") or {}).get("pose_search") or {}
    if "images_per_s" in ph:
        return ph["images_per_s"], False
    if "images_per_s_below" in ph:
        return ph["images_per_s_below"], True
    return None, False


def search_rate_str(r: dict) -> str:
    rate, bound = pose_search_rate(r)
    if rate is None:
        return "-"
    return "<" + _f(rate, ".3f") if bound else _f(rate, ".2f")


def _source(tool: str, name: str | None) -> str:
    if name is None:
        return "none written"
    if tool == "abinit" and name == "pose.0.pkl":
        return f"{name} (pretraining: random poses)"
    if tool == "abinit" and name == "z.0.pkl":
        return f"{name} (pretraining: z not trained yet)"
    return name


def table(results: list[dict], minutes: float) -> str:
    ours = next((r for r in results if r["tool"] == "ours" and "train_images_per_s" in r), None)
    cols = ["tool", "particles", "wall s", "train img/s", "pose-search img/s", "img/CPU-s", "ours/theirs img/s",
            "ours/their pose search", "ours/theirs img/CPU-s", "poses from", "median view err (deg)", "z from", "abs Spearman(PC1 z, t)",
            "load avg"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        m = r.get("metrics", {})
        ratio = ratio_cpu = ratio_search = "-"
        if ours is not None and r["tool"] in CRYODRGN_TOOLS:
            if r.get("train_images_per_s"):
                ratio = _f(ours["train_images_per_s"] / r["train_images_per_s"], ".1f") + "x"
            rate, bound = pose_search_rate(r)
            if rate:
                ratio_search = (">" if bound else "") + _f(ours["train_images_per_s"] / rate, ".1f") + "x"
            if r.get("images_per_cpu_s") and ours.get("images_per_cpu_s"):
                ratio_cpu = _f(ours["images_per_cpu_s"] / r["images_per_cpu_s"], ".1f") + "x"
        if r["tool"] == "train_vae":
            pfrom, view = "-", "given (true poses)"
        else:
            pfrom = _source(r["tool"], m.get("poses_from"))
            view = m.get("pose_error") or _f(m.get("median_view_deg"))
        rows.append("| " + " | ".join([
            r["label"], str(r.get("n_particles", "")), _f(r.get("wall_s"), ".0f"),
            _f(r.get("train_images_per_s"), ".2f"), search_rate_str(r), _f(r.get("images_per_cpu_s"), ".2f"),
            ratio, ratio_search, ratio_cpu, pfrom, view, _source(r["tool"], m.get("z_from")),
            m.get("z_error") or _f(m.get("abs_spearman_pc1"), ".3f"), _f(r.get("load_avg_mean"), ".1f")]) + " |")
    lines = [f"Budget {minutes:g} min of wall clock per training tool, from launch. train img/s: images "
             "processed / training time; img/CPU-s: that rate divided by the run's mean CPU share; "
             "ratios are against `cryofire-nb train`.", "", *rows, ""]
    for r in results:
        notes = []
        if r.get("error"):
            notes.append("ERROR " + r["error"])
        if r["tool"] in CRYODRGN_TOOLS:
            ph = ", ".join(f"{k} {v['images']} img in {v['seconds']:.0f} s"
                           + (f" (+{v['unfinished_batch_s']:.0f} s on an unfinished batch)"
                              if v.get("unfinished_batch_s") else "")
                           for k, v in (r.get("phases") or {}).items())
            notes.append(f"phases: {ph or 'none logged'}")
            notes.append(f"stopped at the budget during {r.get('phase_at_end') or 'start-up'}"
                         if r.get("killed_at_budget") else f"finished (exit code {r.get('returncode')})")
            sized = {k: v for k, v in r["plan"].items() if k not in ("planning_rates_img_per_s", "budget_s")}
            notes.append("sized: " + ", ".join(f"{k}={_f(v, '.0f') if isinstance(v, float) else v}"
                                               for k, v in sized.items()))
        elif "stopped_by" in r:
            if r.get("wall_s", 0) > 1.05 * minutes * 60:
                notes.append(f"OVERRAN the budget: {r['wall_s']:.0f} s for {minutes * 60:.0f} s"
                             + (" (stopped by the bench)" if r.get("killed_at_budget") else ""))
            steady = r.get("steady_images_per_s")
            notes.append(f"{r['images']} images in {r['steps']} steps, stopped by {r['stopped_by']}"
                         + (f"; {steady:.0f} img/s after the first steps (CUDA / cuDNN start-up excluded)"
                            if steady else "")
                         + ("; train img/s excludes the voxel search that precedes training"
                            if r["tool"] == "ours_search" else ""))
            ms = r.get("metrics_search_poses")
            if ms:
                notes.append(f"the voxel search's own poses: median view err {_f(ms.get('median_view_deg'))} deg")
            for tag, d in (r.get("inference") or {}).items():
                mm = d.get("metrics") or {}
                notes.append(f"`cryofire-nb infer` on the {tag.replace('_', ' ')} ({d.get('images', '?')} "
                             f"images): {_f(d.get('images_per_s'), '.0f')} img/s"
                             + (f", median view err {_f(mm.get('median_view_deg'))} deg, abs Spearman "
                                f"{_f(mm.get('abs_spearman_pc1'), '.3f')}" if mm else "")
                             + (f" ERROR {d['error']}" if d.get("error") else ""))
        lines.append(f"- {r['label']}: " + "; ".join(notes))
    return "\n".join(lines)


def _gpu_name(device: str) -> str | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_name(0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="particles to simulate (default 10000)")
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget per training tool (default 3)")
    p.add_argument("--tools", default="ours,abinit,abinit_het_old,train_vae",
                   help=f"comma-separated subset of {','.join(ALL_TOOLS)} (default: all but ours_search)")
    p.add_argument("--init-search", action="store_true", help="also run ours with --init-search (adds ours_search)")
    p.add_argument("--cryodrgn-n", type=int, help="give the cryoDRGN tools only the first K particles (--ind)")
    p.add_argument("--cryodrgn-minutes", type=float,
                   help="budget of each cryoDRGN tool (default --minutes): abinit needs time to reach its pose "
                        "search (start-up, pretraining)")
    p.add_argument("--heldout-n", type=int, default=1000, help="held-out particles for infer (0: none; default 1000)")
    p.add_argument("--box", type=int, help="simulate at this box size (same physical box; default the config's 32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default: the demo's CPU configuration; cryoDRGN kept off any GPU) or cuda (the demo's "
                        "GPU configuration, bf16 autocast; cryoDRGN on the GPU)")
    p.add_argument("--ours-cmd", help="command that runs cryofire-nb (default .venv/bin/cryofire-nb), "
                                      "e.g. 'python3 -m cryofire_nb'")
    p.add_argument("--cryodrgn-cmd", help="command that runs cryodrgn (default .venv-cryodrgn/bin/cryodrgn), e.g. "
                                          "'python3 -c \"from cryodrgn.command_line import main_commands as m; m()\"'")
    p.add_argument("-o", "--out", type=Path,
                   help="output folder (default bench/out/bench_train_n{N}_m{MINUTES}[_d{BOX}][_cuda])")
    args = p.parse_args(argv)
    if args.ours_cmd:
        COMMANDS["ours"] = shlex.split(args.ours_cmd)
    if args.cryodrgn_cmd:
        COMMANDS["cryodrgn"] = shlex.split(args.cryodrgn_cmd)

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if args.init_search and "ours_search" not in tools:
        tools.insert(tools.index("ours") + 1 if "ours" in tools else 0, "ours_search")
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad or not tools:
        p.error(f"unknown tool(s) {bad}; choose from {', '.join(ALL_TOOLS)}")
    if not args.minutes > 0 or args.n < 2:
        p.error("--minutes must be > 0 and --n >= 2")
    if args.cryodrgn_n is not None and not 2 <= args.cryodrgn_n <= args.n:
        p.error("--cryodrgn-n must be in [2, --n]")
    if args.box is not None and (args.box < 8 or args.box % 2):
        p.error("--box must be even and >= 8")
    if not args.ours_cmd and not OURS.is_file():
        print(f"error: {OURS} is missing: run `make install` first", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda, but this Python's torch sees no CUDA device", file=sys.stderr)
            return 2
    if any(t in CRYODRGN_TOOLS for t in tools) and not args.cryodrgn_cmd and not CRYODRGN.is_file():
        print(f"error: {CRYODRGN} is missing: run `make cryodrgn-venv` to install cryoDRGN 4.3.1 "
              f"(or pass --tools ours)", file=sys.stderr)
        return 2
    try:
        import cryofire_nb  # noqa: F401
    except ImportError:
        print("error: cryofire_nb is not importable: run this script with .venv/bin/python", file=sys.stderr)
        return 2

    tag = (f"_d{args.box}" if args.box else "") + ("_cuda" if args.device == "cuda" else "")
    out = args.out or REPO / "bench" / "out" / f"bench_train_n{args.n}_m{args.minutes:g}{tag}"
    out.mkdir(parents=True, exist_ok=True)
    dtag = f"_d{args.box}" if args.box else ""
    data = ensure_data(out.parent / f"bench_train_data_n{args.n}{dtag}", args.n, box=args.box)
    heldout = None
    if args.heldout_n > 0 and any(t.startswith("ours") for t in tools):
        heldout = ensure_data(out.parent / f"bench_train_heldout_n{args.heldout_n}{dtag}", args.heldout_n, seed=1,
                              box=args.box)
    truth = load_truth(data)
    truth_heldout = load_truth(heldout) if heldout is not None else None

    meta = {"n": args.n, "minutes": args.minutes, "tools": tools, "cryodrgn_n": args.cryodrgn_n,
            "data": str(data), "heldout": str(heldout) if heldout else None,
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
            "load_avg_at_start": os.getloadavg(), "device": args.device, "gpu": _gpu_name(args.device),
            "planning_rates": PLAN_RATES_GPU if args.device == "cuda" else PLAN_RATES,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results = []
    for tool in tools:
        budget = args.cryodrgn_minutes if tool in CRYODRGN_TOOLS and args.cryodrgn_minutes else args.minutes
        print(f"\n=== {LABELS[tool]} ({budget:g} min) ===", flush=True)
        try:
            if tool.startswith("ours"):
                r = run_ours(tool, data, heldout, out, args.minutes, truth, truth_heldout, args.device)
            else:
                r = run_cryodrgn(tool, data, out, args.cryodrgn_minutes or args.minutes, truth, args.cryodrgn_n,
                                 args.device)
        except Exception as err:  # one tool's failure must not lose the others' numbers
            import traceback

            traceback.print_exc()
            r = {"tool": tool, "label": LABELS[tool], "error": f"{type(err).__name__}: {err}", "plan": {}}
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("cmd", "log")}, default=str)[:2000], flush=True)
        (out / "bench_train.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    meta["load_avg_at_end"] = os.getloadavg()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    md = table(results, args.minutes)
    cmin = f" ({args.cryodrgn_minutes:g} min for cryoDRGN's)" if args.cryodrgn_minutes else ""
    header = (f"# bench_train: {args.n} particles (D={image_size(data)}), {args.minutes:g} min per tool{cmin}, "
              f"device {args.device}{' (' + meta['gpu'] + ')' if meta['gpu'] else ''}\n\n"
              f"Machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={meta['env_threads']['OMP_NUM_THREADS']}; "
              f"load average at start {meta['load_avg_at_start'][0]:.1f}, at end {meta['load_avg_at_end'][0]:.1f} "
              f"(includes the benchmarked process itself). Started {meta['started']}.\n\n")
    (out / "bench_train.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    (out / "bench_train.md").write_text(header + md + "\n")
    print("\n" + header + md)
    print(f"\nwrote {out / 'bench_train.json'} and {out / 'bench_train.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
