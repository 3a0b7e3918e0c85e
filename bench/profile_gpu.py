"""Where the time of a training step and of inference goes, on one device: the parts of a
``cryofire-nb train`` step (batch assembly, encoder, whole step with backward and
optimiser) at several batch sizes, inference throughput at several batch sizes, and
PyTorch's profiler table of the heaviest operators of a few training steps.

The steps are the trainer's own (:class:`cryofire_nb.train.trainer.Trainer`), with the
loss disc at its final radius (d / 2) and the pose-only phase over, i.e. the cost of a
step late in training; the weights are untrained (timing only). Inference is
:func:`cryofire_nb.train.infer.infer_dataset` over the whole stack, run twice: the second
pass is the steady state (the first includes cuDNN's algorithm search and lazy
initialisation), both are reported.

Usage (a stack written by ``cryofire-nb simulate``, e.g. ``--box 64``)::

    python bench/profile_gpu.py DATA_DIR [DATA_DIR ...] [--device cuda] [--train-batches 64 128 256]
        [--infer-batches 512 1024 2048] [--infer-turns 1 4] [-o OUT.json]

Configuration: the demo's GPU model (paper encoder, hypervolume decoder, zdim 8); bf16
autocast on cuda, fp32 on the CPU (``--no-amp`` for fp32 on cuda too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryofire_nb.train.config import TrainConfig  # noqa: E402
from cryofire_nb.train.infer import autocast_for, infer_dataset  # noqa: E402
from cryofire_nb.train.steps import encode_both  # noqa: E402
from cryofire_nb.train.trainer import Trainer  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_per_call(fn, dev: torch.device, reps: int, warm: int) -> float:
    """Median over ``reps`` synchronised calls, after ``warm`` calls, in seconds."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def trainer_for(data: Path, batch: int, device: str, amp: bool, workdir: Path) -> Trainer:
    cfg = TrainConfig(particles=str(data / "particles.mrcs"), outdir=str(workdir / f"b{batch}"),
                      ctf=str(data / "ctf.pkl"), encoder="paper", decoder="hypervolume", zdim=8, batch_size=batch,
                      lr=1e-4, device=device, amp=amp, max_images=10 ** 9, progress=False,
                      command_line="bench/profile_gpu.py")
    tr = Trainer(cfg)
    tr._build()
    cfg.resolve_schedules(tr.d, 10 ** 9)
    tr._set_schedules()
    tr.state.images_seen = 10 ** 9 - 1  # late in training: full loss disc, pose-only phase over
    return tr


def profile_training(data: Path, batches: list[int], device: str, amp: bool, reps: int, workdir: Path,
                     op_table: Path | None) -> list[dict]:
    rows = []
    for b in batches:
        tr = trainer_for(data, b, device, amp, workdir)
        dev = tr.device
        rng = np.random.default_rng(0)
        pos = np.sort(rng.choice(tr.n, size=min(b, tr.n), replace=False))
        batch = tr.data.batch(pos)

        def encode():
            with torch.no_grad(), autocast_for(dev, tr.amp):
                encode_both(tr.model, batch.real)

        t_batch = time_per_call(lambda: tr.data.batch(pos), dev, reps, 2)
        t_enc = time_per_call(encode, dev, reps, 2)
        t_step = time_per_call(lambda: tr._step(pos), dev, reps, 3)
        row = {"d": tr.d, "batch": b, "amp": tr.amp, "batch_assembly_ms": 1e3 * t_batch,
               "encoder_fwd_both_paths_ms": 1e3 * t_enc, "train_step_ms": 1e3 * t_step,
               "train_images_per_s": b / t_step,
               "loss_disc_points": int(tr.marching.mask(tr.lattice, tr.state.images_seen).sum())}
        if dev.type == "cuda":
            row["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        print(json.dumps(row), flush=True)
        rows.append(row)
        if op_table is not None and b == batches[len(batches) // 2]:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if dev.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(5):
                    tr._step(pos)
                _sync(dev)
            key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
            op_table.write_text(f"# d={tr.d}, batch {b}, 5 training steps, amp={tr.amp}\n"
                                + prof.key_averages().table(sort_by=key, row_limit=25))
        tr = None  # the model goes before the next batch size's (the closures above hold the name)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def profile_inference(data: Path, batches: list[int], device: str, amp: bool, workdir: Path,
                      turns: tuple[int, ...] = (1,)) -> list[dict]:
    """``turns`` 4: ``infer --quarter-turns`` (each image also encoded turned by 1-3
    quarter turns, the decoder's loss picks the hypothesis)."""
    tr = trainer_for(data, 64, device, amp, workdir)
    rows = []
    for t in turns:
        for b in batches:
            passes = [infer_dataset(tr.model, tr.data, batch_size=b, radius_px=tr.d / 2, amp=tr.amp, turns=t)
                      for _ in range(2)]
            row = {"d": tr.d, "batch": b, "turns": t, "amp": tr.amp, "images": len(tr.data),
                   "first_pass_images_per_s": passes[0].images_per_s, "images_per_s": passes[1].images_per_s}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", nargs="+", type=Path, help="folders written by cryofire-nb simulate")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-amp", action="store_true", help="fp32 on cuda too")
    p.add_argument("--train-batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--infer-batches", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--infer-turns", type=int, nargs="+", default=[1], choices=[1, 4],
                   help="1: one encoder pass; 4: infer --quarter-turns (default 1)")
    p.add_argument("--reps", type=int, default=10, help="timed calls per measurement (median)")
    p.add_argument("-o", "--out", type=Path, default=REPO / "bench" / "out" / "profile_gpu.json")
    args = p.parse_args(argv)
    for folder in args.data:
        if not (folder / "particles.mrcs").is_file() or not (folder / "ctf.pkl").is_file():
            p.error(f"{folder}: no particles.mrcs / ctf.pkl (write one with cryofire-nb simulate)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    meta = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "torch": torch.__version__, "amp": not args.no_amp and dev.type == "cuda"}
    result = {"meta": meta, "train": [], "infer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.data:
            d_tag = folder.name
            result["train"] += profile_training(folder, args.train_batches, args.device, not args.no_amp,
                                                args.reps, Path(tmp), args.out.with_name(f"ops_{d_tag}.txt"))
            result["infer"] += profile_inference(folder, args.infer_batches, args.device, not args.no_amp, Path(tmp),
                                                 tuple(args.infer_turns))
            args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
