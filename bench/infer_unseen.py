"""Inference on particles a run never saw: one encoder pass, ``--refine`` (semi-amortised)
and ``--search`` (exhaustive), each with its throughput beside the accuracy it reached.

    cryofire-nb infer RUN DATA/particles.mrcs --ctf DATA/ctf.pkl -o OUT [--refine | --search]
    cryofire-nb evaluate OUT --gt-poses DATA/poses.pkl --gt-conf DATA/conf.pkl -o OUT/eval

Writes ``bench/results/infer_unseen_<name>.json`` and ``.md``.

    python bench/infer_unseen.py bench/out/adk_continuous_d32/run bench/out/unseen_d32 --name adk_continuous_d32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MODES = {"one pass": [], "refine": ["--refine"], "search": ["--search"]}


def cli(args: list[str], log) -> None:
    log.write(f"$ cryofire-nb {' '.join(args)}\n")
    log.flush()
    subprocess.run([sys.executable, "-m", "cryofire_nb", *args], stdout=log, stderr=subprocess.STDOUT, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="output folder of cryofire-nb train")
    ap.add_argument("data", type=Path, help="simulator folder of the unseen particles")
    ap.add_argument("--name", required=True)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = ap.parse_args(argv)
    work = ROOT / "bench" / "out" / f"infer_{args.name}"
    work.mkdir(parents=True, exist_ok=True)
    truth = ["--gt-conf", str(args.data / "conf.pkl")] if (args.data / "conf.pkl").is_file() else \
        ["--gt-labels", str(args.data / "labels.pkl")]
    res = {"run": str(args.run), "data": str(args.data), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "modes": {}}
    with open(work / "log.txt", "a") as log:
        for mode in args.modes:
            out = work / mode.replace(" ", "_")
            if out.exists():  # this script's own folder: a rerun replaces it
                shutil.rmtree(out)
            cli(["infer", str(args.run), str(args.data / "particles.mrcs"), "--ctf", str(args.data / "ctf.pkl"),
                 "-o", str(out), *MODES[mode]], log)
            cli(["evaluate", str(out), "--gt-poses", str(args.data / "poses.pkl"), *truth, "-o",
                 str(out / "eval")], log)
            rec = yaml.safe_load((out / "infer.yaml").read_text())
            m = json.loads((out / "eval" / "metrics.json").read_text())
            rate = rec.get("refine_images_per_s") or rec.get("search_images_per_s") or rec["encoder_images_per_s"]
            conf = m.get("conformation") or {}
            res["modes"][mode] = {
                "images_per_s": rate, "view_median_deg": m["rotations"]["view"]["median_deg"],
                "view_mean_deg": m["rotations"]["view"]["mean_deg"],
                "translation_median_px": (m.get("translations") or {}).get("median_px"),
                "abs_spearman": None if conf.get("spearman_pc1_conf") is None else abs(conf["spearman_pc1_conf"]),
                "confusion": (conf.get("confusion") or {}).get("error_fraction"),
                "refined_kept_fraction": rec.get("refined_kept_fraction")}
    out_json = ROOT / "bench" / "results" / f"infer_unseen_{args.name}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=1))
    lines = [f"# infer on unseen particles: {args.name}", "", f"run `{args.run}`, particles `{args.data}`, "
             f"{res['machine']}", "", "| mode | images/s | view error median / mean (deg) | translation (px) | "
             "\\|Spearman\\| |", "|---|---|---|---|---|"]
    for mode, r in res["modes"].items():
        sp = "-" if r["abs_spearman"] is None else f"{r['abs_spearman']:.3f}"
        tr = "-" if r["translation_median_px"] is None else f"{r['translation_median_px']:.3f}"
        lines.append(f"| {mode} | {r['images_per_s']:.0f} | {r['view_median_deg']:.2f} / {r['view_mean_deg']:.2f} "
                     f"| {tr} | {sp} |")
    (out_json.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
