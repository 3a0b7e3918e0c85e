"""SIGINT / SIGTERM during ``cryofire-nb train``: the run stops between steps, writes its
checkpoint and every output, exits 130 / 143 with one line naming the resume command, and
that command finishes the run bit for bit as an uninterrupted run of the same seed."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryofire_nb.commands.train import resume_command
from cryofire_nb.io import read_latents, read_poses
from cryofire_nb.train import interrupt, load_checkpoint
from cryofire_nb.train.run_model import _torch_load
from cryofire_nb.train.synthetic import make_synthetic_set

N, D, EPOCHS = 192, 16, 30
OUTPUTS = ("poses.pkl", "z.pkl", "weights.pt", "volume.mrc", "history.json", "training_curve.png",
           "config.yaml", "checkpoint.pt")
# A small amortised model (about a thousand images/s on one core) so the run lasts a few
# seconds; a checkpoint every 320 images is the sign that training has started.
TINY = ["--method", "amortised", "--zdim", "2", "--encoder", "released", "--encoder-channels", "8", "16", "32",
        "--encoder-hidden", "32", "--decoder", "hypervolume", "--decoder-hidden", "32", "--decoder-layers", "1",
        "--pe-dim", "4", "-b", "32", "--lr", "3e-3", "--no-progress", "--log-every", "2", "--seed", "3",
        "--device", "cpu", "--checkpoint-every", "320"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "cryofire_nb", "train", *map(str, args)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synth"), n=N, d=D, n_levels=3, snr=2.0, seed=1)


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(cli(synth.particles, "--ctf", synth.ctf, "-o", out, "--epochs", EPOCHS, *TINY), env=ENV,
                   check=True, capture_output=True, timeout=300)
    return out


def run_and_signal(cmd: list[str], sig: int, ready, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start ``cmd``, send ``sig`` once ``ready()`` holds, return the finished process."""
    # the child hears SIGINT even when this test runs as a background job (which ignores it)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not ready() and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal:\n" + proc.stderr.read()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def outputs(folder: Path):
    poses = read_poses(folder / "poses.pkl")
    return poses.rots, poses.trans_frac, read_latents(folder / "z.pkl").mu, _torch_load(folder / "weights.pt")[
        "state_dict"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])  # SIGINT's handling is also checked in-process below
def test_signal_writes_everything_and_resume_matches_uninterrupted_run(synth, straight, tmp_path, sig):
    out = tmp_path / "run"
    cmd = cli(synth.particles, "--ctf", synth.ctf, "-o", out, "--epochs", EPOCHS, *TINY)
    res = run_and_signal(cmd, sig, lambda: (out / "checkpoint.pt").exists())
    assert res.returncode == 128 + sig, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    assert last.startswith(f"cryofire-nb train: interrupted by {signal.Signals(sig).name} after ")
    resume = last.split("resume with: ", 1)[1]
    assert resume.endswith(f"--load {out}/checkpoint.pt") and f"--epochs {EPOCHS}" in resume
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    stopped = load_checkpoint(out / "checkpoint.pt").state
    assert 320 <= stopped.images_seen < EPOCHS * N  # stopped part-way, after the first checkpoint
    assert read_poses(out / "poses.pkl").rots.shape == (N, 3, 3)

    words = shlex.split(resume)
    assert words[:2] == ["cryofire-nb", "train"]
    done = subprocess.run(cli(*words[2:]), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "checkpoint.pt").state.images_seen == EPOCHS * N
    # Same seed, same budget: the data order is a function of (seed, epoch), the counters,
    # the optimiser and the random generators are in the checkpoint, so the result is exact.
    got, want = outputs(out), outputs(straight)
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(a, b)
    assert got[3].keys() == want[3].keys() and all(torch.equal(got[3][k], want[3][k]) for k in got[3])


def test_first_signal_is_recorded_second_acts_and_handlers_come_back():
    # as in an interactive shell, whatever handler the test process started with (the second
    # signal falls back to the handler that was there before)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _first_signal_is_recorded_second_acts()
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_signal_is_recorded_second_acts():
    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    with interrupt.stop_on_signals() as req:
        assert interrupt.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary of the main thread
        assert interrupt.requested() is req and req.signum == signal.SIGTERM and req.exit_code == 143
        with pytest.raises(KeyboardInterrupt):  # a second signal is no longer held back
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert interrupt.requested() is None
    assert {s: signal.getsignal(s) for s in interrupt.SIGNALS} == before


def test_stage_is_recorded_and_sigint_exit_code():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive shell
    try:
        _stage_is_recorded()
    finally:
        signal.signal(signal.SIGINT, previous)


def _stage_is_recorded():
    with interrupt.stop_on_signals() as req:
        with interrupt.stage("voxel pose search"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert req.stage == "voxel pose search" and req.exit_code == 130 and req.name == "SIGINT"


def test_no_handlers_outside_the_main_thread():
    seen = {}

    def work():
        with interrupt.stop_on_signals() as req:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["req"] = req

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen["handler"] == before and seen["req"].signum is None


@pytest.mark.parametrize("line, expected", [
    ("cryofire-nb train p.mrcs -o out --epochs 3", "cryofire-nb train p.mrcs -o out --epochs 3 --load out/checkpoint.pt"),
    ("cryofire-nb train p.mrcs -o out --load old/checkpoint.pt --epochs 3",
     "cryofire-nb train p.mrcs -o out --epochs 3 --load out/checkpoint.pt"),
    ("cryofire-nb train 'my data.mrcs' -o out --load=old/checkpoint.pt",
     "cryofire-nb train 'my data.mrcs' -o out --load out/checkpoint.pt"),
])
def test_resume_command_replaces_any_load(line, expected):
    assert resume_command(line, "out") == expected


@pytest.mark.slow
def test_signal_during_the_pose_search_stops_it_and_resumes(tmp_path):
    """The default (table) method: a signal during the voxel pose search leaves it between
    two batches (on a large stack it runs for hours, and a scheduler's SIGTERM gives
    seconds); the checkpoint holds the untrained model, and the resumed run searches
    again and ends as a straight run does (minutes on one core)."""
    synth = make_synthetic_set(tmp_path / "synth", n=96, d=D, n_levels=3, snr=2.0, seed=1)
    common = ["--ctf", synth.ctf, "--max-images", 128, "--seed", 3, "--device", "cpu", "--no-progress",
              "--no-hetero-global"]
    out, ref = tmp_path / "run", tmp_path / "straight"
    subprocess.run(cli(synth.particles, "-o", ref, *common), env=ENV, check=True, capture_output=True, timeout=1800)
    seen = []

    def searching() -> bool:  # config.yaml comes just before the search; its set-up takes well under 3 s
        if not seen and (out / "config.yaml").exists():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 3

    res = run_and_signal(cli(synth.particles, "-o", out, *common), signal.SIGTERM, searching, timeout=1800)
    assert res.returncode == 143, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM during the voxel pose search, before any training" in last
    assert (out / "checkpoint.pt").is_file() and not (out / "poses.pkl").exists()
    words = shlex.split(last.split("start again with: ", 1)[1])
    done = subprocess.run(cli(*words[2:]), env=ENV, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    assert "init search" in done.stdout  # the search starts again
    got, want = outputs(out), outputs(ref)
    for a, b in zip(got[:3], want[:3]):
        np.testing.assert_array_equal(a, b)


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started in the background
    try:
        with interrupt.stop_on_signals() as req:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert req.signum is None and interrupt.requested() is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
