"""The default command on a simulated set, scored against its ground truth.

Runs, exactly as a user would type it (no method flags)::

    cryofire-nb simulate CONFIG.yaml -o DATA                      (unless DATA exists)
    cryofire-nb train DATA/particles.mrcs --ctf DATA/ctf.pkl -o RUN --time-limit MINUTES
    cryofire-nb evaluate RUN --gt-poses DATA/poses.pkl --gt-conf|--gt-labels ... -o RUN/eval

and writes ``bench/results/default_pipeline_<name>.json`` and ``.md``: the wall time, peak
resident memory, images/s, the pose table's median / mean view error, translation error,
|Spearman(PC1, truth)| or the confusion error, the consensus search's and the encoder's
own view errors, the encoder's held-out score against the table, and the machine.

    python bench/default_pipeline.py data_demo/adk_continuous_d32.yaml --minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def cli(*args: str, log: Path) -> float:
    """Run ``cryofire-nb ARGS`` (this interpreter), append its output to ``log``; wall s."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ cryofire-nb {' '.join(args)}\n")
        f.flush()
        subprocess.run([sys.executable, "-m", "cryofire_nb", *args], stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def score(run: Path, data: Path, log: Path, extra: list[str]) -> dict:
    truth = ["--gt-conf", str(data / "conf.pkl")] if (data / "conf.pkl").is_file() else \
        ["--gt-labels", str(data / "labels.pkl")]
    out = run / f"eval_{run.name}" if not extra else run.parent / f"eval_{run.name}_{extra[-1]}"
    args = ["evaluate", str(run), "--gt-poses", str(data / "poses.pkl"), *truth, "-o", str(out)]
    if extra:
        args += extra
    cli(*args, log=log)
    return json.loads((out / "metrics.json").read_text())


def poses_metrics(poses: Path, data: Path) -> dict:
    """View / translation errors of a pose file against the truth (no z)."""
    from cryofire_nb.io import read_poses
    from cryofire_nb.metrics import evaluate_run

    gt, p = read_poses(data / "poses.pkl"), read_poses(poses)
    m = evaluate_run(p.rots, p.trans_frac, gt.rots, gt.trans_frac, box_d(data))
    return {"view_median_deg": m.rotations.view.median_deg, "view_mean_deg": m.rotations.view.mean_deg,
            "translation_median_px": None if m.translations is None else m.translations.median_px}


def breakdown(poses: Path, data: Path) -> list[dict]:
    """View error of ``poses`` per true state (discrete sets) or per fifth of the true
    conformation t (continuous sets), each group aligned with the others (one global
    alignment) and on its own: a minority conformation placed badly shows here, where the
    median over all particles hides it."""
    import numpy as np

    from cryofire_nb.io import read_poses
    from cryofire_nb.io.pkl import load_pickles
    from cryofire_nb.metrics import evaluate_run

    d = box_d(data)
    gt, p = read_poses(data / "poses.pkl"), read_poses(poses)
    v_all = np.asarray(evaluate_run(p.rots, p.trans_frac, gt.rots, gt.trans_frac, d).rotations.view_deg)
    if (data / "labels.pkl").is_file():
        lab = np.asarray(load_pickles(data / "labels.pkl")[0]).reshape(-1).astype(int)
        groups = [(f"state {k}", lab == k) for k in np.unique(lab)]
    else:
        t = np.asarray(load_pickles(data / "conf.pkl")[0], dtype=np.float64).reshape(-1)
        edges = np.linspace(0, 1, 6)
        groups = [(f"t in [{a:.1f}, {b:.1f}{']' if b == 1 else ')'}", (t >= a) & ((t < b) | (b == 1)))
                  for a, b in zip(edges[:-1], edges[1:])]
    out = []
    for name, sel in groups:
        own = np.asarray(evaluate_run(p.rots[sel], p.trans_frac[sel], gt.rots[sel], gt.trans_frac[sel], d)
                         .rotations.view_deg)
        out.append({"group": name, "n": int(sel.sum()), "view_median_deg": float(np.median(v_all[sel])),
                    "over_20deg": float((v_all[sel] > 20).mean()), "own_alignment_median_deg": float(np.median(own)),
                    "own_alignment_over_20deg": float((own > 20).mean())})
    return out


def train_console(log: Path) -> list[str]:
    """The last ``train`` command's console lines in ``log`` (progress bars left out):
    what the run said about its stages, e.g. the consensus search's starts and the
    refinement's budget."""
    text = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    starts = [i for i, line in enumerate(text) if line.startswith("$ cryofire-nb train")]
    if not starts:
        return []
    out = []
    for line in text[starts[-1] + 1:]:
        if line.startswith("$ cryofire-nb"):
            break
        if line.strip() and not line.rstrip().endswith(("it/s]", "s/it]")):
            out.append(line.rstrip())
    return out


def box_d(data: Path) -> int:
    from cryofire_nb.io import ImageSource

    return ImageSource(data / "particles.mrcs").d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, help="simulator config (data_demo/*.yaml)")
    ap.add_argument("--minutes", type=float, default=20.0, help="--time-limit of the train command")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out", help="where data and runs go")
    ap.add_argument("--name", help="result name (default: the config's stem)")
    ap.add_argument("--train-args", default="", help="extra train arguments (default none: the default command)")
    ap.add_argument("--score-only", action="store_true",
                    help="score the run already in the work folder again (no simulation, no training)")
    args = ap.parse_args(argv)
    name = args.name or args.config.stem
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    data = work / "data"
    if not (data / "particles.mrcs").is_file():
        cli("simulate", str(args.config), "-o", str(data), log=log)
    run = work / "run"
    if args.score_only:
        res = json.loads((RESULTS / f"default_pipeline_{name}.json").read_text())
        res["table_by_group"] = breakdown(run / "poses.pkl", data)
        res["train_console"] = train_console(log)
        write(res, name)
        return 0
    train = ["train", str(data / "particles.mrcs"), "--ctf", str(data / "ctf.pkl"), "-o", str(run),
             "--time-limit", f"{args.minutes:g}", "--no-progress", *args.train_args.split()]
    if run.exists():  # this script's own folder: a rerun replaces it
        shutil.rmtree(run)
    wall = cli(*train, log=log)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    m = score(run, data, log, [])
    hist = json.loads((run / "history.json").read_text())
    cfg = (run / "config.yaml").read_text()
    res = {"name": name, "config": str(args.config.relative_to(ROOT) if args.config.is_absolute() else args.config),
           "command": "cryofire-nb " + " ".join(train[:1] + ["particles.mrcs", "--ctf", "ctf.pkl", "-o", "run"]
                                                + train[6:]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
                      f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
           "load_average_at_end": os.getloadavg(),
           "wall_s": round(wall, 1), "peak_rss_gb": round(peak_gb, 2),
           "images_seen": hist["train"][-1]["images_seen"] if hist["train"] else 0,
           "table": m, "encoder": hist.get("final", {}) and hist["final"].get("encoder"),
           "holdout": hist.get("holdout", [])[-1:] or None, "warnings": hist.get("warnings", []),
           "refinement": [e for e in hist.get("events", [])], "config_yaml": cfg}
    if (run / "init_search_poses.pkl").is_file():
        res["consensus_search"] = poses_metrics(run / "init_search_poses.pkl", data)
    if (run / "encoder_poses.pkl").is_file():
        res["encoder_poses"] = poses_metrics(run / "encoder_poses.pkl", data)
    res["table_by_group"] = breakdown(run / "poses.pkl", data)
    res["train_console"] = train_console(log)
    write(res, name)
    return 0


def write(res: dict, name: str) -> None:
    """The result as JSON and as a markdown table, in bench/results/."""
    m, wall, peak_gb = res["table"], res["wall_s"], res["peak_rss_gb"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"default_pipeline_{name}.json").write_text(json.dumps(res, indent=1, default=str))
    rot = m["rotations"]["view"]
    conf = m.get("conformation") or {}
    lines = [f"# default pipeline: {name}", "", f"`{res['command']}` on {res['machine']}", "",
             "| quantity | value |", "|---|---|",
             f"| wall time (train) | {wall / 60:.1f} min |", f"| peak RSS | {peak_gb:.2f} GB |",
             f"| images seen | {res['images_seen']} |",
             f"| table: view error median / mean | {rot['median_deg']:.2f} / {rot['mean_deg']:.2f} deg |"]
    if m.get("translations"):
        lines.append(f"| table: translation median | {m['translations']['median_px']:.3f} px |")
    if conf.get("spearman_pc1_conf") is not None:
        lines.append(f"| \\|Spearman(PC1, truth)\\| | {abs(conf['spearman_pc1_conf']):.3f} |")
    if conf.get("confusion"):
        lines.append(f"| confusion error | {conf['confusion']['error_fraction']:.4f} |")
    for key, label in (("consensus_search", "consensus search"), ("encoder_poses", "encoder, one pass")):
        if key in res:
            lines.append(f"| {label}: view error median / mean | {res[key]['view_median_deg']:.2f} / "
                         f"{res[key]['view_mean_deg']:.2f} deg |")
    if res["holdout"]:
        h = res["holdout"][0]
        lines.append(f"| encoder vs table, held-out / training particles | {h['held_out_rotation_median_deg']:.1f}"
                     f" / {h['training_rotation_median_deg']:.1f} deg |")
    stages = [line for line in res.get("train_console", [])
              if line.startswith(("consensus search:", "heterogeneous refinement"))]
    if stages:
        lines += ["", "The run's console on its stages:", "", *[f"- {line}" for line in stages]]
    lines += ["", f"warnings: {res['warnings'] or 'none'}", ""]
    if res.get("table_by_group"):
        lines += ["Table by true conformation (one global alignment / each group aligned on its own):", "",
                  "| group | particles | median view error | > 20 deg | own alignment: median | > 20 deg |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {g['group']} | {g['n']} | {g['view_median_deg']:.2f} | {g['over_20deg']:.3f} | "
                  f"{g['own_alignment_median_deg']:.2f} | {g['own_alignment_over_20deg']:.3f} |"
                  for g in res["table_by_group"]]
        lines.append("")
    (RESULTS / f"default_pipeline_{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
