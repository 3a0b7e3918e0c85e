"""Does the encoder learn poses that hold on particles it never saw? The encoder alone,
trained from a finished pose-table run with and without rendered images.

From a run's decoder (its refined volumes) and its pose and latent tables, a new encoder
(the run's own architecture, fresh weights) is trained for the same wall time in each
variant, one after the other on the same machine, with the loss of the pipeline's
distillation (:func:`cryofire_nb.train.steps.distill_step`, decoder frozen):

* ``rendered 0``: the table's training particles only (nine tenths of them; one tenth is
  held out, as the pipeline does);
* ``rendered R``: each batch of particles joined by R images per particle rendered from
  the decoder at random exactly known labels (:mod:`cryofire_nb.train.rendered`).

At fixed times each encoder is scored in one pass: against the table on the held-out
and on as many training particles (median rotation difference), and against the truth on
a second simulated set of new particles (median view error after alignment, translation,
|Spearman(PC1 of z, t)|). Writes ``bench/results/encoder_rendered_<name>.{json,md}``.

    .venv/bin/cryofire-nb simulate data_demo/demo_sim.yaml -o bench/out/er/data
    .venv/bin/cryofire-nb train bench/out/er/data/particles.mrcs --ctf bench/out/er/data/ctf.pkl \\
        -o bench/out/er/run --time-limit 6
    .venv/bin/cryofire-nb simulate data_demo/demo_sim.yaml -o bench/out/er/new --seed 7
    .venv/bin/python bench/encoder_rendered.py --run bench/out/er/run --data bench/out/er/data \\
        --new bench/out/er/new --minutes 8 --rendered 0 1 --side-by-side --name demo
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

from cryofire_nb.io import read_latents  # noqa: E402
from cryofire_nb.metrics import evaluate_run  # noqa: E402
from cryofire_nb.model.schedule import PoseOnlyPhase  # noqa: E402
from cryofire_nb.rotations import geodesic_distance_deg  # noqa: E402
from cryofire_nb.train.data import ParticleData  # noqa: E402
from cryofire_nb.train.infer import infer_dataset  # noqa: E402
from cryofire_nb.train.rendered import Renderer, shell_noise_power  # noqa: E402
from cryofire_nb.train.run_model import CryoFireModel, load_weights  # noqa: E402
from cryofire_nb.train.steps import PoseTargets, distill_step  # noqa: E402
from cryofire_nb.train.trainer import holdout_positions  # noqa: E402


def score(model, data, table, z_table, hold, seen, new_data, new_gt) -> dict:
    out = {}
    for name, pos in (("held_out", hold), ("training", seen)):
        inf = infer_dataset(model, data, positions=pos)
        rot = geodesic_distance_deg(torch.as_tensor(inf.rots, dtype=torch.float64),
                                    torch.as_tensor(table[0][pos], dtype=torch.float64))
        out[f"{name}_vs_table_deg"] = round(float(rot.median()), 2)
    inf = infer_dataset(model, new_data)
    m = evaluate_run(inf.rots, inf.shift_px / new_data.d, new_gt[0], new_gt[1], new_data.d, z=inf.z,
                     gt_conf=new_gt[2])
    out["new_view_error_median_deg"] = round(m.rotations.view.median_deg, 2)
    out["new_view_error_mean_deg"] = round(m.rotations.view.mean_deg, 2)
    out["new_translation_median_px"] = round(m.translations.median_px, 3)
    if m.conformation is not None and m.conformation.spearman_pc1_conf is not None:
        out["new_spearman_pc1"] = round(abs(m.conformation.spearman_pc1_conf), 3)
    model.train()
    return out


def run_variant(args, rendered: float, base: CryoFireModel, data, table, z_table, hold, seen, train_pos,
                noise, new_data, new_gt) -> dict:
    spec = base.spec
    model = CryoFireModel(spec)
    model.decoder.load_state_dict(base.decoder.state_dict())
    torch.manual_seed(args.seed)
    model.encoder = type(model.encoder)(spec.encoder_config)
    model.train()
    opt = torch.optim.Adam(model.encoder.parameters(), lr=args.lr)
    ema = None
    if args.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model.encoder, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
    gen = torch.Generator().manual_seed(args.seed + 1)
    renderer = Renderer(data, train_pos, table[1], z_table, noise) if rendered > 0 else None
    pose_only = PoseOnlyPhase(0)
    mask = data.lattice.mask(data.d / 2)
    limit = args.minutes * 60
    checkpoints = [limit * f for f in (0.25, 0.5, 1.0)]
    rng = np.random.default_rng(args.seed)
    t0, spent, images, steps, rows = time.perf_counter(), 0.0, 0, 0, []
    order, k = rng.permutation(train_pos), 0
    while checkpoints:
        if k + args.batch_size > len(order):
            order, k = rng.permutation(train_pos), 0
        pos = order[k:k + args.batch_size]
        k += args.batch_size
        t = time.perf_counter()
        batch = data.batch(pos)
        tgt = PoseTargets(torch.as_tensor(table[0][pos]), torch.as_tensor(table[1][pos]))
        zt = None if z_table is None else torch.as_tensor(z_table[pos])
        extra = None if renderer is None else renderer.draw(model, max(1, round(len(pos) * rendered)), gen)
        res = distill_step(model, batch, tgt, data.lattice, mask, 10 ** 9, pose_only, 0.0, 1.0, 0.1, gen,
                           z_target=zt, rendered=extra)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(model.encoder)
        spent += time.perf_counter() - t
        images += len(pos)
        steps += 1
        if spent >= checkpoints[0]:
            checkpoints.pop(0)
            row = {"train_seconds": round(spent, 1), "particle_images": images, "steps": steps,
                   **score(model, data, table, z_table, hold, seen, new_data, new_gt)}
            if ema is not None:
                raw = model.encoder
                model.encoder = ema.module
                row["ema"] = score(model, data, table, z_table, hold, seen, new_data, new_gt)
                model.encoder = raw
            print(f"rendered {rendered}: {row}", flush=True)
            rows.append(row)
    return {"rendered_per_image": rendered, "wall_s": round(time.perf_counter() - t0, 1), "scores": rows}


def side_by_side(args) -> None:
    """Each variant in its own process (one thread), all started together; one result."""
    import json
    import subprocess

    base = [a for a in sys.argv[1:] if a != "--side-by-side"]
    cut = base.index("--rendered")
    rest = base[cut + 1:]
    while rest and not rest[0].startswith("--"):
        rest = rest[1:]
    base = base[:cut] + rest
    procs, parts = [], []
    for r in args.rendered:
        part = f"{args.name}__part{r:g}"
        parts.append(HERE / "results" / f"encoder_rendered_{part}.json")
        cmd = [sys.executable, __file__, *base, "--rendered", f"{r:g}", "--name", part]
        procs.append(subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")))
    if any(p.wait() for p in procs):
        raise SystemExit("a variant failed")
    results = [json.loads(p.read_text()) for p in parts]
    merged = dict(results[0], name=args.name, side_by_side=True,
                  variants=[v for r in results for v in r["variants"]])
    for p in parts:
        p.unlink()
        p.with_suffix(".md").unlink()
    write_outputs(args, merged)


def write_outputs(args, result: dict) -> None:
    out = HERE / "results" / f"encoder_rendered_{args.name}.json"
    common.write_result(out, result)
    n, hold = result["particles"], result["held_out"]
    how = "side by side, one process of one thread each" if result.get("side_by_side") else "one after the other"
    lines = [f"# The encoder alone, with and without rendered images: {args.name}", "",
             f"run `{result['run']}`, {n} particles ({hold} held out), new set `{result['new']}` "
             f"({result['new_particles']}), {result['minutes_each']} min of training each ({how}), "
             f"{result['machine']}, commit {result['commit']}", "",
             "| rendered per particle | train s | particle images | held-out vs table (deg) | training vs table "
             "(deg) | new: view error median / mean (deg) | new: translation (px) | new: \\|Spearman\\| |",
             "|---|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        for s in v["scores"]:
            lines.append(f"| {v['rendered_per_image']:g} | {s['train_seconds']} | {s['particle_images']} | "
                         f"{s['held_out_vs_table_deg']} | {s['training_vs_table_deg']} | "
                         f"{s['new_view_error_median_deg']} / {s['new_view_error_mean_deg']} | "
                         f"{s['new_translation_median_px']} | {s.get('new_spearman_pc1', '')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished pose-table run (weights.pt, poses.pkl, z.pkl)")
    ap.add_argument("--data", type=Path, required=True, help="its simulated set (particles.mrcs, ctf.pkl)")
    ap.add_argument("--new", type=Path, required=True, help="a second simulated set (new particles, with truth)")
    ap.add_argument("--minutes", type=float, default=4.0, help="training time of each variant")
    ap.add_argument("--rendered", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side-by-side", action="store_true",
                    help="train the variants at the same time, one process of one thread each, so that they share "
                         "the machine's load alike (default: one after the other)")
    ap.add_argument("--ema", type=float, default=None, metavar="DECAY",
                    help="also score an exponential moving average of the encoder's weights")
    ap.add_argument("--name", default="demo")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    if args.side_by_side and len(args.rendered) > 1:
        side_by_side(args)
        return

    base = load_weights(args.run)
    pre, norm = base.spec.preprocess_config, base.spec.norm
    data = ParticleData(args.data / "particles.mrcs", ctf=args.data / "ctf.pkl", preprocess_config=pre,
                        normalization=norm)
    table = data.read_poses_for(args.run / "poses.pkl")
    lat = read_latents(args.run / "z.pkl")
    z_table = None if base.spec.encoder.get("zdim", 0) == 0 else np.asarray(lat.mu, dtype=np.float32)
    n = len(data)
    hold = holdout_positions(n, args.seed)
    train_pos = np.setdiff1d(np.arange(n), hold)
    seen = np.sort(np.random.default_rng(17).choice(train_pos, len(hold), replace=False))
    noise_pos = train_pos[:: max(1, len(train_pos) // 1000)]
    noise = shell_noise_power(base, data, noise_pos, table[0][noise_pos], table[1][noise_pos],
                              None if z_table is None else z_table[noise_pos])
    new_data = ParticleData(args.new / "particles.mrcs", ctf=args.new / "ctf.pkl", preprocess_config=pre,
                            normalization=norm)
    gt = new_data.read_ground_truth(args.new / "poses.pkl", args.new / "conf.pkl", None)
    new_gt = (gt.rots, gt.trans_frac, gt.conf)

    result = {"bench": "encoder_rendered", "name": args.name, "commit": common.git_commit(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
              "run": str(args.run), "data": str(args.data), "new": str(args.new), "particles": n,
              "held_out": int(len(hold)), "new_particles": len(new_data), "minutes_each": args.minutes,
              "batch_size": args.batch_size, "lr": args.lr, "variants": []}
    for r in args.rendered:
        result["variants"].append(run_variant(args, r, base, data, table, z_table, hold, seen, train_pos, noise,
                                              new_data, new_gt))
    write_outputs(args, result)


if __name__ == "__main__":
    main()
