"""``cryofire-nb evaluate OUTDIR --gt-poses P.pkl [--gt-conf C.pkl | --gt-labels L.pkl]
[--gt-vols DIR] -o DIR``: metrics of a trained run (or of ``cryofire-nb infer``'s output on
other particles, with the run it names) against ground truth.

Writes ``DIR/metrics.json`` (:func:`cryofire_nb.metrics.evaluate_run`: pose alignment,
view / in-plane / geodesic errors, translation errors in pixels of the box d,
conformation metrics, FSC per true volume) and PNG figures (view-error histogram, latent
PCA coloured by the truth, FSC curves when true volumes are given).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "evaluate a trained run against ground-truth poses, conformations and volumes"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="output folder of `cryofire-nb train` or of `cryofire-nb infer`")
    p.add_argument("--gt-poses", required=True, help="true poses (.pkl)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gt-conf", help="true continuous conformation per particle (.pkl)")
    g.add_argument("--gt-labels", help="true discrete state per particle (.pkl)")
    p.add_argument("--gt-vols", help="folder with the true volumes (simulator output: vol_state_XX.mrc, "
                                     "vol_path_XX.mrc with sim_info.yaml)")
    p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace the metrics and figures of an earlier evaluation")


def main(args: argparse.Namespace) -> int:
    from ..io.outputs_guard import guard_folder
    from ..train.evaluation import evaluate_outdir
    from ..train.trainer import resolve_device

    guard_folder(args.outdir, [args.run, args.gt_poses, args.gt_conf, args.gt_labels, args.gt_vols],
                 products=["metrics.json", "*.png"], overwrite=args.overwrite)
    result = evaluate_outdir(args.run, args.gt_poses, args.outdir, gt_conf=args.gt_conf, gt_labels=args.gt_labels,
                             gt_vols=args.gt_vols, device=str(resolve_device(args.device)))
    print("\n".join(result.metrics.summary_lines()))
    print(f"wrote {result.metrics_json} and {', '.join(p.name for p in result.figures)}")
    return 0
