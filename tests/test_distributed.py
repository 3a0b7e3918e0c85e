"""``torchrun --nproc_per_node 2 -m cryofire_nb train`` (gloo on the CPU): both processes
finish, rank 0 alone writes and reports, the run records its world size, and training on
two halves of every batch follows a one-process run of the same images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from cryofire_nb.io import read_poses
from cryofire_nb.train.run_model import _torch_load
from cryofire_nb.train.synthetic import make_synthetic_set

N, D, EPOCHS = 192, 16, 5
OUTPUTS = ("poses.pkl", "z.pkl", "weights.pt", "volume.mrc", "history.json", "training_curve.png",
           "config.yaml", "checkpoint.pt")
# zdim 0: no random draw in the step, so two halves with averaged gradients must give the
# weights of one process (up to the order of floating-point sums)
TINY = ["--method", "amortised", "--zdim", "0", "--encoder", "released", "--encoder-channels", "8", "16", "32",
        "--encoder-hidden", "32", "--decoder", "hypervolume", "--decoder-hidden", "32", "--decoder-layers", "1",
        "--pe-dim", "4", "-b", "32", "--lr", "3e-3", "--no-progress", "--log-every", "2", "--seed", "3",
        "--device", "cpu", "--epochs", str(EPOCHS)]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synth"), n=N, d=D, n_levels=3, snr=2.0, seed=1)


def run(prefix: list[str], synth, out) -> subprocess.CompletedProcess:
    cmd = [*prefix, "-m", "cryofire_nb", "train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(out),
           *TINY]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def test_two_processes_finish_write_once_and_follow_one_process(synth, tmp_path):
    one = run([sys.executable], synth, tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], synth,
              tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    out = tmp_path / "two"
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary files left behind
    assert two.stdout.count("wrote ") == 1 and two.stdout.count("trained ") == 1  # rank 0 reports, alone
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["world_size"] == 2
    assert yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())["world_size"] == 1
    assert read_poses(out / "poses.pkl").rots.shape == (N, 3, 3)
    h1 = json.loads((tmp_path / "one" / "history.json").read_text())["train"]
    h2 = json.loads((out / "history.json").read_text())["train"]
    assert [e["images_seen"] for e in h2] == [e["images_seen"] for e in h1]  # the same global batches
    assert h1[0]["recon"] / h1[-1]["recon"] > 3  # the run learns
    w1, w2 = (_torch_load(p / "weights.pt")["state_dict"] for p in (tmp_path / "one", out))
    worst = max(float((w1[k] - w2[k]).abs().max() / (w1[k].abs().max() + 1e-12)) for k in w1
                if w1[k].is_floating_point())
    assert worst < 1e-2, worst  # 1e-4 measured; a rank training alone on its half is off by far more
    # the final encoder pass is divided between the processes and gathered in the particles' order
    p1, p2 = (read_poses(p / "poses.pkl") for p in (tmp_path / "one", out))
    cos = (np.einsum("nij,nij->n", p1.rots, p2.rots) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 1.0, np.median(angle)  # measured: 0.0, 90% within 0.03 deg


# several EM starts scored on an odd sample (each process scores its part of it)
STARTS = dict(n_iterations=4, batch_size=64, batch_size_full=32, refine_rounds=0, seed=2, n_starts=2, start_sample=75)

WORKER = f"STARTS = {STARTS!r}\n" + """
import sys
import numpy as np
import torch
from cryofire_nb.abinit import AbinitConfig, run_abinit
from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.io import read_ctf
from cryofire_nb.train.data import ParticleData
from cryofire_nb.train.distributed import Group

particles, ctf, out = sys.argv[1:4]
group = Group.from_env(torch.device("cpu"))
data = HartleyData.from_images(ParticleData(particles, ctf=ctf), read_ctf(ctf).table)
cfg = AbinitConfig(n_iterations=6, batch_size=64, batch_size_full=32, refine_rounds=2, seed=2)
res = run_abinit(data, cfg, progress=False, group=group)
multi = run_abinit(data, AbinitConfig(**STARTS), progress=False, group=group)
scores = [s["score"] for s in next(h for h in multi.history if h["stage"] == "starts")["starts"]]
np.savez(f"{out}_{group.rank}.npz", rots=res.rots.numpy(), shifts=res.shifts_px.numpy(), vol=res.volume.numpy(),
         multi_rots=multi.rots.numpy(), scores=np.array(scores))
group.close()
"""


def test_run_abinit_divided_between_two_processes_follows_one(tmp_path):
    """run_abinit on two gloo processes, each its part of an odd number of particles (75
    and 76, several batches each, the last of one rank empty): both ranks end with the
    same poses and volume, and these follow a one-process run (the joined backprojection
    sums differ from one process's only in the order of floating-point additions)."""
    from cryofire_nb.abinit import AbinitConfig, run_abinit
    from cryofire_nb.hartley_data import HartleyData
    from cryofire_nb.io import read_ctf
    from cryofire_nb.train.data import ParticleData

    small = make_synthetic_set(tmp_path / "set", n=151, d=16, n_levels=3, snr=3.0, motion_px=4, seed=5)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(small.particles), str(small.ctf), str(tmp_path / "out")],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (np.load(tmp_path / f"out_{r}.npz") for r in (0, 1))
    for key in ("rots", "shifts", "vol"):
        np.testing.assert_array_equal(r0[key], r1[key])  # every rank holds the same tables
    data = HartleyData.from_images(ParticleData(small.particles, ctf=small.ctf), read_ctf(small.ctf).table)
    one = run_abinit(data, AbinitConfig(n_iterations=6, batch_size=64, batch_size_full=32, refine_rounds=2, seed=2),
                     progress=False)
    assert r0["rots"].shape == (151, 3, 3)
    cos = (np.einsum("nij,nij->n", one.rots.numpy(), r0["rots"]) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    # measured: every particle within 0.04 deg, the volumes within 2e-7 of their peak
    assert (angle < 0.1).mean() >= 0.95 and angle.max() < 1.0, np.sort(angle)[-10:]
    assert np.abs(one.shifts_px.numpy() - r0["shifts"]).max() < 0.05  # pixels
    vol = one.volume.numpy()
    assert np.abs(r0["vol"] - vol).max() < 1e-4 * np.abs(vol).max()
    # the starts are scored alike on both ranks and as on one process
    for key in ("multi_rots", "scores"):
        np.testing.assert_array_equal(r0[key], r1[key])
    multi = run_abinit(data, AbinitConfig(**STARTS), progress=False)
    scores = [s["score"] for s in next(h for h in multi.history if h["stage"] == "starts")["starts"]]
    np.testing.assert_allclose(r0["scores"], scores, rtol=1e-4)
    cos = (np.einsum("nij,nij->n", multi.rots.numpy(), r0["multi_rots"]) - 1) / 2
    assert (np.degrees(np.arccos(np.clip(cos, -1, 1))) < 0.1).mean() >= 0.95


HETERO_WORKER = """
import pickle
import sys
import numpy as np
import torch
from cryofire_nb.hartley_data import HartleyData
from cryofire_nb.hetero import HeteroRefineConfig, hetero_refine
from cryofire_nb.io import read_ctf, read_mrc, read_poses
from cryofire_nb.parallel import Alone
from cryofire_nb.rotations import axis_angle_to_matrix
from cryofire_nb.train.distributed import Group

particles, ctf, poses, conf, out, mode = sys.argv[1:7]
group = Group.from_env(torch.device("cpu")) if mode == "two" else Alone()
hd = HartleyData.from_images(np.asarray(read_mrc(particles).data), read_ctf(ctf).table)
gt = read_poses(poses)
d = hd.lattice.d
g = torch.Generator().manual_seed(4)
aa = torch.randn(len(gt.rots), 3, generator=g, dtype=torch.float64)
aa = aa / aa.norm(dim=1, keepdim=True) * np.radians(12.0)
start = (axis_angle_to_matrix(aa) @ torch.as_tensor(gt.rots).double()).float()
shifts = torch.as_tensor(gt.shift_px(d)).float() + 0.5
t = np.asarray(pickle.load(open(conf, "rb")), dtype=np.float64)
z = np.stack([t + 0.1 * np.random.default_rng(1).standard_normal(len(t)), np.zeros(len(t))], 1)
cfg = HeteroRefineConfig(n_components=1, global_search=True, grid=(100, 12), n_bins=2, refine_steps_deg=(8.0, 4.0),
                         batch_size=32, seed=6)
res = hetero_refine(hd, start, shifts, z, cfg, progress=False, group=None if mode == "one" else group)
np.savez(f"{out}_{mode}_{group.rank}.npz", rots=res.rots.numpy(), shifts=res.shifts_px.numpy(),
         coef=res.coefficients.numpy(), basis=res.basis.numpy(),
         stages=np.array([h["stage"] for h in res.history]))
if mode == "two":
    group.close()
"""


def test_hetero_refine_divided_between_two_processes_follows_one(tmp_path):
    """The heterogeneous refinement (global stage, local rounds, scores read through the
    basis, gauge fixes) on two gloo processes, each its part of an odd number of
    particles: both ranks end with the same tables and basis, and these follow a
    one-process run (the joined backprojection sums differ from one process's only in
    the order of floating-point additions)."""
    small = make_synthetic_set(tmp_path / "set", n=161, d=16, n_levels=5, snr=3.0, motion_px=4, seed=8)
    script = tmp_path / "worker.py"
    script.write_text(HETERO_WORKER)
    args = [str(small.particles), str(small.ctf), str(small.poses), str(small.conf), str(tmp_path / "out")]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *args, "two"], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), *args, "one"], env=ENV, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    r0, r1, o = (np.load(tmp_path / f"out_{m}.npz") for m in ("two_0", "two_1", "one_0"))
    for key in ("rots", "shifts", "coef", "basis"):
        np.testing.assert_array_equal(r0[key], r1[key])  # every rank holds the same tables
    assert list(r0["stages"]) == list(o["stages"]) and "global" in list(o["stages"])
    assert r0["rots"].shape == (161, 3, 3)
    cos = (np.einsum("nij,nij->n", o["rots"], r0["rots"]) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    # measured: every particle within 0.05 deg, shifts equal, scores and basis within 5e-7
    # of their peaks
    assert (angle < 0.1).mean() >= 0.95, np.sort(angle)[-10:]
    assert np.abs(o["shifts"] - r0["shifts"]).max(1).mean() < 0.02  # pixels, averaged over the particles
    assert np.abs(o["coef"] - r0["coef"]).max() < 1e-2 * np.abs(o["coef"]).max()
    assert np.abs(o["basis"] - r0["basis"]).max() < 1e-3 * np.abs(o["basis"]).max()


@pytest.mark.slow
def test_the_pose_search_is_divided_between_two_processes_and_matches_one(synth, tmp_path):
    """The default (table) method: each process searches its half of the particles, the
    halves and the backprojection sums are joined, and the search's poses follow a
    one-process search of the same particles (the EM stage is the same on both ranks;
    only the order of floating-point sums in the joined volume differs)."""
    common = ["--max-images", "64", "--seed", "3", "--device", "cpu", "--no-progress", "--no-hetero-global"]

    def table_run(prefix, out):
        cmd = [*prefix, "-m", "cryofire_nb", "train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(out),
               *common]
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)

    one = table_run([sys.executable], tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = table_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                    tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("init search") == 1  # rank 0 reports, alone
    r1, r2 = (read_poses(p / "init_search_poses.pkl") for p in (tmp_path / "one", tmp_path / "two"))
    assert r1.rots.shape == r2.rots.shape == (N, 3, 3)
    # rotation between the two searches' poses of each particle
    cos = (np.einsum("nij,nij->n", r1.rots, r2.rots) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 0.5, np.median(angle)
    assert (angle < 1).mean() >= 0.9, (angle < 1).mean()
    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["world_size"] == 2
    # the heterogeneous refinement is divided too: the run's table follows the one-process table
    t1, t2 = (read_poses(p / "poses.pkl") for p in (tmp_path / "one", tmp_path / "two"))
    assert t2.rots.shape == (N, 3, 3)
    cos = (np.einsum("nij,nij->n", t1.rots, t2.rots) - 1) / 2
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    # measured: median 0.0, every particle within 1 deg
    assert np.median(angle) < 0.5 and (angle < 1).mean() >= 0.9, (np.median(angle), (angle < 1).mean())
    # the encoder's pass over all particles is divided between the processes and gathered in order
    e1, e2 = (read_poses(p / "encoder_poses.pkl") for p in (tmp_path / "one", tmp_path / "two"))
    assert e2.rots.shape == (N, 3, 3)
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert any("heterogeneous" in str(e) or "stages" in e for e in h2["events"])
