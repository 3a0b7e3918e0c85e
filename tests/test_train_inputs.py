"""Bad input to `cryofire-nb train` (and infer / eval-vol / evaluate): exit status 2, a
message naming the file, and nothing written (the output folder is not even created)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_nb.cli import main
from cryofire_nb.io import CtfParams, Poses, read_ctf, read_poses, write_ctf, write_mrc, write_poses
from cryofire_nb.train.synthetic import make_synthetic_set


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synth"), n=64, d=16, snr=2.0, seed=2)


def run_train(synth, outdir, *extra) -> int:
    return main(["train", str(synth.particles), "-o", str(outdir), "--ctf", str(synth.ctf), "--epochs", "1",
                 "--no-progress", *map(str, extra)])


def expect_input_error(rc: int, capsys, outdir, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)
    assert not outdir.exists(), "nothing may be written on bad input"


def test_pose_count_mismatch(synth, tmp_path, capsys):
    p = read_poses(synth.poses)
    bad = tmp_path / "poses_short.pkl"
    write_poses(bad, Poses(p.rots[:-1], p.trans_frac[:-1]))
    out = tmp_path / "out"
    expect_input_error(run_train(synth, out, "--poses", bad), capsys, out, "poses_short.pkl", "63", "64")


def test_ctf_count_mismatch(synth, tmp_path, capsys):
    bad = tmp_path / "ctf_long.pkl"
    t = read_ctf(synth.ctf).table
    write_ctf(bad, CtfParams(np.concatenate([t, t[:3]])))
    out = tmp_path / "out"
    rc = main(["train", str(synth.particles), "-o", str(out), "--ctf", str(bad), "--no-progress"])
    expect_input_error(rc, capsys, out, "ctf_long.pkl", "67")


def test_ground_truth_count_mismatch(synth, tmp_path, capsys):
    p = read_poses(synth.poses)
    bad = tmp_path / "gt_short.pkl"
    write_poses(bad, Poses(p.rots[:10], p.trans_frac[:10]))
    out = tmp_path / "out"
    expect_input_error(run_train(synth, out, "--gt-poses", bad), capsys, out, "gt_short.pkl")


def test_odd_box(tmp_path, capsys):
    stack = tmp_path / "odd.mrcs"
    write_mrc(stack, np.random.default_rng(0).standard_normal((8, 15, 15)).astype(np.float32), 2.0)
    out = tmp_path / "out"
    rc = main(["train", str(stack), "-o", str(out), "--no-progress"])
    expect_input_error(rc, capsys, out, "odd.mrcs", "odd")


@pytest.mark.parametrize("which", ["particles", "ctf", "load", "ind"])
def test_missing_files(synth, tmp_path, capsys, which):
    out = tmp_path / "out"
    missing = tmp_path / f"no_such_{which}.pkl"
    if which == "particles":
        rc = main(["train", str(tmp_path / "no_such_particles.mrcs"), "-o", str(out), "--no-progress"])
        name = "no_such_particles.mrcs"
    else:
        rc = run_train(synth, out, "--ctf" if which == "ctf" else f"--{which}", missing)
        name = missing.name
    expect_input_error(rc, capsys, out, name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(synth, tmp_path, capsys):
    out = tmp_path / "out"
    expect_input_error(run_train(synth, out, "--device", "cuda"), capsys, out, "cuda")


def test_bad_settings(synth, tmp_path, capsys):
    out = tmp_path / "out"
    expect_input_error(run_train(synth, out, "--zdim", "-1"), capsys, out, "zdim")
    expect_input_error(run_train(synth, out, "--poses", synth.poses, "--distill-poses", synth.poses), capsys, out,
                       "--poses")


def test_infer_eval_vol_evaluate_on_missing_run(synth, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["infer", str(tmp_path / "no_run"), str(synth.particles), "-o", str(out)])
    expect_input_error(rc, capsys, out, "weights.pt")
    rc = main(["eval-vol", str(tmp_path / "no_run"), "--z", "0", "-o", str(out)])
    expect_input_error(rc, capsys, out, "weights.pt")
    rc = main(["evaluate", str(tmp_path / "no_run"), "--gt-poses", str(synth.poses), "-o", str(out)])
    expect_input_error(rc, capsys, out, "poses.pkl")
