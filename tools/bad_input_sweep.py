#!/usr/bin/env python
"""Bad inputs and faults against every ``cryofire-nb`` command, each run in a subprocess.

Usage::

    python tools/bad_input_sweep.py [--jobs 2] [--only SUBSTRING] [--workdir DIR]

A small simulated set (64 particles, 16 px) and a one-epoch training run are made first;
every case then runs the command line in its own folder and its outcome is classified:

=============  ==============================================================================
ok-error       exit 2, one ``cryofire-nb CMD: error: ...`` line (or argparse's usage error)
               naming the file or flag, no traceback
ok-warning     exit 0 with a ``warning:`` line on stderr
ok             a legitimate success (outputs finite and not all zero) or, for a signal
               during ``train``, exit 130 / 143 with the resume command
data-lost      an input or a pre-existing output changed (files hashed before and after)
code-executed  a crafted pickle or checkpoint ran code (its marker file appeared)
traceback      a Python traceback
silent-wrong   exit 0 on input that should be refused, or outputs with NaN / all zeros
bad-exit       any other outcome: another exit code, no error line, a timeout
=============  ==============================================================================

Writes ``bench/results/bad_input_sweep.md`` and ``.json``, prints the counts per class
and exits 1 when any failure class (the last five) is non-zero.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OK_CLASSES = ("ok-error", "ok-warning", "ok")
FAIL_CLASSES = ("data-lost", "code-executed", "traceback", "silent-wrong", "bad-exit")
N, D = 64, 16
IS_ROOT = os.geteuid() == 0
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
TINY_TRAIN = ["--method", "amortised", "--zdim", "2", "--encoder", "released", "--encoder-channels", "8", "8", "16",
              "--encoder-hidden", "16", "--decoder", "hypervolume", "--decoder-hidden", "16", "--decoder-layers", "1",
              "--pe-dim", "4", "-b", "16", "--no-progress", "--device", "cpu", "--seed", "0"]


@dataclass
class Case:
    id: str
    command: str
    args: list[str]  # ``{B}`` is the base data folder, ``{C}`` the case's own folder
    what: str  # the input or fault, for the table
    expect: str = "error"  # error | ok | warning | signal
    setup: Callable[[Path, Path], None] | None = None  # (base, case folder)
    may_change: tuple[str, ...] = ()  # pre-existing files (relative to the case folder) it may replace
    signal: int | None = None
    fsize_limit: int | None = None  # bytes: a write beyond fails with EFBIG (a full disk, simulated)
    skip: str | None = None  # reason the case cannot run here
    timeout: float = 300.0
    zero_ok: bool = False  # all-zero outputs are right (all-zero input)


@dataclass
class Outcome:
    id: str
    command: str
    what: str
    outcome: str
    rc: int | None
    seconds: float
    detail: str = ""
    expect: str = ""
    stderr_tail: str = ""
    changed: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- base data

def make_base(base: Path) -> None:
    """Simulated particles with CTF and poses, a .star and a .cs for them, indices, a small
    simulation config and a one-epoch training run."""
    from cryofire_nb.io import image_names_for_stack, make_cs_table, read_ctf, read_poses, write_cs, write_indices
    from cryofire_nb.io import write_relion31_star
    from cryofire_nb.train.synthetic import make_synthetic_set

    synth = make_synthetic_set(base / "synth", n=N, d=D, n_levels=3, snr=2.0, seed=1)
    poses, ctf = read_poses(synth.poses), read_ctf(synth.ctf)
    write_relion31_star(base / "synth" / "particles.star", image_names_for_stack("particles.mrcs", N),
                        poses=poses, ctf=ctf)
    write_cs(base / "synth" / "particles.cs", make_cs_table("particles.mrcs", N, D, 4.0, poses=poses, ctf=ctf))
    write_indices(base / "ind.pkl", np.arange(0, N, 2))
    (base / "sim.yaml").write_text(
        f"structures: [{REPO}/data_demo/adk_open.pdb.gz, {REPO}/data_demo/adk_closed.pdb.gz]\n"
        "n_particles: 8\nd: 16\npixel_size_angstrom: 8.0\nseed: 0\nheterogeneity: {kind: continuous}\n"
        "max_shift_px: 1.0\nsnr: 1.0\n")
    rc = subprocess.run([sys.executable, "-m", "cryofire_nb", "train", str(synth.particles), "--ctf", str(synth.ctf),
                         "-o", str(base / "run"), "--epochs", "1", *TINY_TRAIN], env=ENV, capture_output=True,
                        text=True)
    if rc.returncode != 0:
        raise SystemExit(f"the base training run failed:\n{rc.stderr}")


# ---------------------------------------------------------------------------- case set-ups

class _RunsCode:
    """Pickles to a call of ``os.system`` that creates the case's marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_pickle(name: str):
    def setup(base: Path, case: Path) -> None:
        with open(case / name, "wb") as f:
            pickle.dump(_RunsCode(case / "MARKER"), f)
    return setup


def crafted_torch(name: str, copy_run: bool = False):
    def setup(base: Path, case: Path) -> None:
        import torch

        if copy_run:
            shutil.copytree(base / "run", case / "run")
        torch.save({"format": "cryofire_nb.checkpoint/1", "evil": _RunsCode(case / "MARKER")}, case / name)
    return setup


def write_bytes(name: str, data: bytes):
    def setup(base: Path, case: Path) -> None:
        (case / name).parent.mkdir(parents=True, exist_ok=True)
        (case / name).write_bytes(data)
    return setup


def copy(src: str, dst: str):
    def setup(base: Path, case: Path) -> None:
        s = base / src
        (case / dst).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if s.is_dir() else shutil.copy)(s, case / dst)
    return setup


def chain(*setups):
    def setup(base: Path, case: Path) -> None:
        for s in setups:
            s(base, case)
    return setup


def truncated(src: str, dst: str, keep: float = 0.5):
    def setup(base: Path, case: Path) -> None:
        data = (base / src).read_bytes()
        (case / dst).write_bytes(data[:int(len(data) * keep)])
    return setup


def stack(dst: str, fn):
    """A stack made from the base particles by ``fn(images) -> images``."""
    def setup(base: Path, case: Path) -> None:
        from cryofire_nb.io import read_mrc, write_mrc

        src = read_mrc(base / "synth" / "particles.mrcs")
        write_mrc(case / dst, fn(src.data.copy()), src.pixel_size_angstrom)
    return setup


def pkl(dst: str, fn):
    """A pickle made from base objects: ``fn(base) -> list of objects`` (dumped in order)."""
    def setup(base: Path, case: Path) -> None:
        with open(case / dst, "wb") as f:
            for obj in fn(base):
                pickle.dump(obj, f)
    return setup


def _poses(base):
    from cryofire_nb.io.pkl import load_pickles
    return load_pickles(base / "synth" / "poses.pkl")[0]


def _ctf(base):
    from cryofire_nb.io.pkl import load_pickles
    return np.array(load_pickles(base / "synth" / "ctf.pkl")[0])


def poses_with(fn):
    def make(base):
        rots, trans = _poses(base)
        rots, trans = np.array(rots), np.array(trans)
        return [fn(rots, trans)]
    return make


def ctf_with(fn):
    def make(base):
        return [fn(_ctf(base))]
    return make


def _set(arr, index, value):
    arr[index] = value
    return arr


def star_edit(dst: str, fn):
    """A .star made from the base one by ``fn(text) -> text``, next to the stack."""
    def setup(base: Path, case: Path) -> None:
        shutil.copy(base / "synth" / "particles.mrcs", case / "particles.mrcs")
        (case / dst).write_text(fn((base / "synth" / "particles.star").read_text()))
    return setup


def _star_column(text: str, column: str, value: str) -> str:
    """Every particle row with ``column`` set to ``value``."""
    lines = text.splitlines()
    head = [i for i, line in enumerate(lines) if line.startswith("data_particles")][0]
    cols = [line.split()[0] for line in lines[head:] if line.startswith("_rln")]
    j = cols.index(f"_{column}")
    out = lines[:head]
    for line in lines[head:]:
        words = line.split()
        if len(words) == len(cols) and not line.startswith("_"):
            words[j] = value
            line = " ".join(words)
        out.append(line)
    return "\n".join(out) + "\n"


def cs_edit(dst: str, fn):
    def setup(base: Path, case: Path) -> None:
        table = np.load(base / "synth" / "particles.cs")
        table = fn(table)
        with open(case / dst, "wb") as f:
            np.save(f, table)
    return setup


def sim_config(text_fn):
    def setup(base: Path, case: Path) -> None:
        (case / "sim.yaml").write_text(text_fn((base / "sim.yaml").read_text()))
    return setup


def readonly_dir(name: str):
    def setup(base: Path, case: Path) -> None:
        (case / name).mkdir()
        (case / name).chmod(0o555)
    return setup


def file_at(name: str):
    return write_bytes(name, b"a file, not a folder\n")


# ---------------------------------------------------------------------------- the cases

P, CTF, POSES, STAR, CS, RUN = ("{B}/synth/particles.mrcs", "{B}/synth/ctf.pkl", "{B}/synth/poses.pkl",
                                "{B}/synth/particles.star", "{B}/synth/particles.cs", "{B}/run")
ROOT_SKIP = "running as root: permissions do not bind" if IS_ROOT else None


def cases() -> list[Case]:
    c: list[Case] = []

    def add(id_, command, args, what, **kw):
        c.append(Case(id_, command, args, what, **kw))

    # ---- files that are not what they should be, for every command reading particles
    for cmd, extra in (("downsample", ["-D", "8", "-o", "{C}/out.mrcs"]),
                       ("backproject", ["--poses", POSES, "-o", "{C}/vol.mrc"]),
                       ("train", ["-o", "{C}/out", "--epochs", "1", *TINY_TRAIN]),
                       ("infer", None)):
        def args(particles, cmd=cmd, extra=extra):
            return [RUN, particles, "-o", "{C}/out", "--ctf", CTF] if cmd == "infer" else [particles, *extra]
        add(f"{cmd}-missing-particles", cmd, args("{C}/nope.mrcs"), "particle file missing")
        add(f"{cmd}-empty-particles", cmd, args("{C}/empty.mrcs"), "empty .mrcs", setup=write_bytes("empty.mrcs", b""))
        add(f"{cmd}-truncated-particles", cmd, args("{C}/t.mrcs"), ".mrcs cut in half",
            setup=truncated("synth/particles.mrcs", "t.mrcs"))
        add(f"{cmd}-text-as-particles", cmd, args("{C}/x.mrcs"), "text file named .mrcs",
            setup=write_bytes("x.mrcs", b"hello\n" * 300))
        add(f"{cmd}-wrong-suffix", cmd, args("{C}/p.jpg"), "unsupported particle file type",
            setup=copy("synth/particles.mrcs", "p.jpg"))
    add("backproject-nan-images", "backproject", ["{C}/p.mrcs", "--poses", POSES, "--ctf", CTF, "-o", "{C}/v.mrc"],
        "NaN pixels in the stack", setup=stack("p.mrcs", lambda x: _set(x, (3, 4, 4), np.nan)))
    add("train-nan-images", "train", ["{C}/p.mrcs", "--ctf", CTF, "-o", "{C}/out", "--epochs", "1", *TINY_TRAIN],
        "NaN pixels in the stack", setup=stack("p.mrcs", lambda x: _set(x, (3, 4, 4), np.nan)))
    add("downsample-constant-images", "downsample", ["{C}/p.mrcs", "-D", "8", "-o", "{C}/o.mrcs"],
        "all-zero images", expect="warning", setup=stack("p.mrcs", lambda x: np.zeros_like(x)), zero_ok=True)
    add("backproject-rectangular-images", "backproject", ["{C}/p.mrcs", "--poses", POSES, "-o", "{C}/v.mrc"],
        "non-square images", setup=stack("p.mrcs", lambda x: x[:, :, :12]))

    # ---- simulate
    add("simulate-ok", "simulate", ["{B}/sim.yaml", "-o", "{C}/sim"], "valid small config", expect="ok",
        timeout=600)
    add("simulate-missing-config", "simulate", ["{C}/nope.yaml", "-o", "{C}/sim"], "config missing")
    add("simulate-empty-config", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "empty config",
        setup=write_bytes("sim.yaml", b""))
    add("simulate-binary-config", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "binary garbage as config",
        setup=write_bytes("sim.yaml", bytes(range(256)) * 4))
    add("simulate-pixel-size-0", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "pixel size 0",
        setup=sim_config(lambda t: t.replace("pixel_size_angstrom: 8.0", "pixel_size_angstrom: 0")))
    add("simulate-voltage-0", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "CTF voltage 0",
        setup=sim_config(lambda t: t + "ctf: {voltage_kv: 0}\n"))
    add("simulate-amplitude-contrast-2", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "amplitude contrast 2",
        setup=sim_config(lambda t: t + "ctf: {amplitude_contrast: 2}\n"))
    add("simulate-missing-structure", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "structure file missing",
        setup=sim_config(lambda t: t.replace("adk_closed.pdb.gz", "nope.pdb.gz")))
    add("simulate-n-particles-0", "simulate", ["{B}/sim.yaml", "-o", "{C}/sim", "--n-particles", "0"],
        "--n-particles 0")
    add("simulate-odd-box", "simulate", ["{B}/sim.yaml", "-o", "{C}/sim", "--box", "15"], "--box 15 (odd)")
    add("simulate-outdir-is-file", "simulate", ["{B}/sim.yaml", "-o", "{C}/f"], "output folder is a file",
        setup=file_at("f"))
    add("simulate-existing-output", "simulate", ["{B}/sim.yaml", "-o", "{C}/sim"], "non-empty output folder",
        setup=write_bytes("sim/keep.txt", b"earlier results\n"))
    add("simulate-unknown-key", "simulate", ["{C}/sim.yaml", "-o", "{C}/sim"], "misspelt config key",
        setup=sim_config(lambda t: t + "n_particle: 10\n"))

    # ---- parse-star
    ps = ["--poses", "{C}/poses.pkl", "--ctf", "{C}/ctf.pkl"]
    add("parse-star-ok", "parse-star", [STAR, *ps], "valid RELION 3.1 .star", expect="ok")
    add("parse-star-missing", "parse-star", ["{C}/nope.star", *ps], ".star missing")
    add("parse-star-empty", "parse-star", ["{C}/e.star", *ps], "empty .star", setup=write_bytes("e.star", b""))
    add("parse-star-garbage", "parse-star", ["{C}/g.star", *ps], "binary garbage .star",
        setup=write_bytes("g.star", bytes(range(256)) * 8))
    add("parse-star-truncated", "parse-star", ["{C}/t.star", *ps], ".star cut mid-row",
        setup=lambda b, c: (c / "t.star").write_bytes((b / "synth/particles.star").read_bytes()[:-40]))
    add("parse-star-nan-defocus", "parse-star", ["{C}/p.star", *ps], "NaN defocus",
        setup=star_edit("p.star", lambda t: _star_column(t, "rlnDefocusU", "nan")))
    add("parse-star-text-in-angles", "parse-star", ["{C}/p.star", *ps], "text in an angle column",
        setup=star_edit("p.star", lambda t: _star_column(t, "rlnAngleRot", "abc")))
    add("parse-star-bad-optics-group", "parse-star", ["{C}/p.star", *ps], "particles name a missing optics group",
        setup=star_edit("p.star", lambda t: _star_column(t, "rlnOpticsGroup", "7")))
    add("parse-star-no-optics-box", "parse-star", ["{C}/p.star", *ps], "no _rlnImageSize and no -D",
        setup=star_edit("p.star", lambda t: t.replace("_rlnImageSize", "_rlnSomethingElse")))
    add("parse-star-D-0", "parse-star", [STAR, "-D", "0", *ps], "-D 0")
    add("parse-star-apix-0", "parse-star", [STAR, "--Apix", "0", *ps], "--Apix 0")
    add("parse-star-apix-negative", "parse-star", [STAR, "--Apix", "-1.5", *ps], "--Apix -1.5")
    add("parse-star-kv-0", "parse-star", [STAR, "--kv", "0", *ps], "--kv 0 (voltage)")
    add("parse-star-w-2", "parse-star", [STAR, "-w", "2", *ps], "-w 2 (amplitude contrast)")
    add("parse-star-D-text", "parse-star", [STAR, "-D", "big", *ps], "-D big (not a number)")
    add("parse-star-output-over-input", "parse-star", ["{C}/p.star", "--poses", "{C}/p.star"],
        "--poses names the input .star", setup=copy("synth/particles.star", "p.star"))
    add("parse-star-existing-output", "parse-star", [STAR, "--poses", "{C}/old.pkl"], "output exists",
        setup=copy("synth/poses.pkl", "old.pkl"))
    add("parse-star-overwrite", "parse-star", [STAR, "--poses", "{C}/old.pkl", "--overwrite"],
        "output exists, --overwrite", expect="ok", setup=copy("synth/poses.pkl", "old.pkl"),
        may_change=("old.pkl",))
    add("parse-star-output-under-file", "parse-star", [STAR, "--poses", "{C}/f/poses.pkl"],
        "output folder is a file", setup=file_at("f"))
    add("parse-star-readonly-folder", "parse-star", [STAR, "--poses", "{C}/ro/poses.pkl"],
        "read-only output folder", setup=readonly_dir("ro"), skip=ROOT_SKIP)
    add("parse-star-disk-full", "parse-star", [STAR, "--poses", "{C}/poses.pkl", "--ctf", "{C}/ctf.pkl"],
        "disk full while writing (simulated: file size limit)", fsize_limit=1024)
    add("parse-star-two-outputs-same", "parse-star", [STAR, "--poses", "{C}/x.pkl", "--ctf", "{C}/x.pkl"],
        "--poses and --ctf name one file")
    add("parse-star-optics-apix-0", "parse-star", ["{C}/p.star", *ps], "optics pixel size 0",
        setup=star_edit("p.star", lambda t: t.replace("\t4.000000\t16\t", "\t0.000000\t16\t")))

    # ---- parse-cs
    pc = ["--poses", "{C}/poses.pkl", "--ctf", "{C}/ctf.pkl"]
    add("parse-cs-ok", "parse-cs", [CS, *pc], "valid .cs", expect="ok")
    add("parse-cs-missing", "parse-cs", ["{C}/nope.cs", *pc], ".cs missing")
    add("parse-cs-garbage", "parse-cs", ["{C}/g.cs", *pc], "garbage .cs", setup=write_bytes("g.cs", b"\x93NUMPY" * 50))
    add("parse-cs-pickled-object", "parse-cs", ["{C}/p.cs", *pc], ".npy holding a pickled object",
        setup=lambda b, c: np.save(open(c / "p.cs", "wb"), np.array([{"a": 1}], dtype=object), allow_pickle=True))
    add("parse-cs-plain-array", "parse-cs", ["{C}/p.cs", *pc], "a plain float array, not a table",
        setup=lambda b, c: np.save(open(c / "p.cs", "wb"), np.zeros((4, 4))))
    add("parse-cs-nan-pose", "parse-cs", ["{C}/p.cs", *pc], "NaN in alignments3D/pose",
        setup=cs_edit("p.cs", lambda t: _set(t, ("alignments3D/pose"), np.nan)))
    add("parse-cs-missing-ctf-field", "parse-cs", ["{C}/p.cs", *pc], "a CTF field missing",
        setup=cs_edit("p.cs", lambda t: _drop_field(t, "ctf/cs_mm")))
    add("parse-cs-apix-0", "parse-cs", [CS, "--Apix", "0", *pc], "--Apix 0")
    add("parse-cs-voltage-0", "parse-cs", ["{C}/p.cs", *pc], "ctf/accel_kv 0",
        setup=cs_edit("p.cs", lambda t: _set(t, "ctf/accel_kv", 0.0)))
    add("parse-cs-existing-output", "parse-cs", [CS, "--poses", "{C}/old.pkl"], "output exists",
        setup=copy("synth/poses.pkl", "old.pkl"))
    add("parse-cs-empty-table", "parse-cs", ["{C}/p.cs", *pc], "a table with no rows",
        setup=cs_edit("p.cs", lambda t: t[:0]))

    # ---- downsample
    add("downsample-ok", "downsample", [P, "-D", "8", "-o", "{C}/small.mrcs"], "valid", expect="ok")
    add("downsample-D-0", "downsample", [P, "-D", "0", "-o", "{C}/o.mrcs"], "-D 0")
    add("downsample-D-odd", "downsample", [P, "-D", "7", "-o", "{C}/o.mrcs"], "-D 7 (odd)")
    add("downsample-D-larger", "downsample", [P, "-D", "32", "-o", "{C}/o.mrcs"], "-D larger than the box")
    add("downsample-chunk-0", "downsample", [P, "-D", "8", "-o", "{C}/o.mrcs", "--chunk", "0"], "--chunk 0")
    add("downsample-output-over-input", "downsample", ["{C}/p.mrcs", "-D", "8", "-o", "{C}/p.mrcs"],
        "-o names the input stack", setup=copy("synth/particles.mrcs", "p.mrcs"))
    add("downsample-existing-output", "downsample", [P, "-D", "8", "-o", "{C}/o.mrcs"], "output exists",
        setup=write_bytes("o.mrcs", b"earlier output"))
    add("downsample-output-under-file", "downsample", [P, "-D", "8", "-o", "{C}/f/o.mrcs"],
        "output folder is a file", setup=file_at("f"))
    add("downsample-disk-full", "downsample", [P, "-D", "8", "-o", "{C}/o.mrcs"],
        "disk full while writing (simulated: file size limit)", fsize_limit=4096)
    add("downsample-readonly-folder", "downsample", [P, "-D", "8", "-o", "{C}/ro/o.mrcs"],
        "read-only output folder", setup=readonly_dir("ro"), skip=ROOT_SKIP)
    add("downsample-output-is-folder", "downsample", [P, "-D", "8", "-o", "{C}/dir.mrcs"],
        "-o names a folder", setup=lambda b, c: (c / "dir.mrcs").mkdir())

    # ---- backproject
    bp = ["--ctf", CTF, "-o", "{C}/vol.mrc"]
    add("backproject-ok", "backproject", [P, "--poses", POSES, *bp], "valid", expect="ok")
    add("backproject-missing-poses", "backproject", [P, "--poses", "{C}/nope.pkl", *bp], "poses missing")
    add("backproject-poses-count", "backproject", [P, "--poses", "{C}/p.pkl", *bp], "poses for 10 particles of 64",
        setup=pkl("p.pkl", poses_with(lambda r, t: (r[:10], t[:10]))))
    add("backproject-non-orthonormal", "backproject", [P, "--poses", "{C}/p.pkl", *bp],
        "rotations scaled by 2 (not orthonormal)", setup=pkl("p.pkl", poses_with(lambda r, t: (2 * r, t))))
    add("backproject-nan-poses", "backproject", [P, "--poses", "{C}/p.pkl", *bp], "NaN in rotations",
        setup=pkl("p.pkl", poses_with(lambda r, t: (_set(r, (0, 0, 0), np.nan), t))))
    add("backproject-poses-wrong-shape", "backproject", [P, "--poses", "{C}/p.pkl", *bp], "poses as one (N, 2) array",
        setup=pkl("p.pkl", poses_with(lambda r, t: t)))
    add("backproject-poses-garbage", "backproject", [P, "--poses", "{C}/p.pkl", *bp], "garbage .pkl",
        setup=write_bytes("p.pkl", b"not a pickle at all"))
    add("backproject-poses-code", "backproject", [P, "--poses", "{C}/evil.pkl", *bp],
        "crafted pickle that runs a command", setup=crafted_pickle("evil.pkl"))
    add("backproject-ctf-count", "backproject", [P, "--poses", POSES, "--ctf", "{C}/c.pkl", "-o", "{C}/v.mrc"],
        "CTF for 10 particles of 64", setup=pkl("c.pkl", ctf_with(lambda t: t[:10])))
    add("backproject-ctf-box", "backproject", [P, "--poses", POSES, "--ctf", "{C}/c.pkl", "-o", "{C}/v.mrc"],
        "CTF written for a 32-px box", setup=pkl("c.pkl", ctf_with(lambda t: _set(t, (slice(None), 0), 32.0))))
    add("backproject-ctf-apix-0", "backproject", [P, "--poses", POSES, "--ctf", "{C}/c.pkl", "-o", "{C}/v.mrc"],
        "CTF pixel size 0", setup=pkl("c.pkl", ctf_with(lambda t: _set(t, (slice(None), 1), 0.0))))
    add("backproject-ctf-voltage-0", "backproject", [P, "--poses", POSES, "--ctf", "{C}/c.pkl", "-o", "{C}/v.mrc"],
        "CTF voltage 0", setup=pkl("c.pkl", ctf_with(lambda t: _set(t, (slice(None), 5), 0.0))))
    add("backproject-ctf-w-2", "backproject", [P, "--poses", POSES, "--ctf", "{C}/c.pkl", "-o", "{C}/v.mrc"],
        "CTF amplitude contrast 2", setup=pkl("c.pkl", ctf_with(lambda t: _set(t, (slice(None), 7), 2.0))))
    add("backproject-ind-out-of-range", "backproject", [P, "--poses", POSES, "--ind", "{C}/i.pkl", *bp],
        "--ind with index 64 of 64", setup=pkl("i.pkl", lambda b: [np.array([0, 5, 64])]))
    add("backproject-ind-duplicates", "backproject", [P, "--poses", POSES, "--ind", "{C}/i.pkl", *bp],
        "--ind with a repeated index", setup=pkl("i.pkl", lambda b: [np.array([0, 5, 5, 7])]))
    add("backproject-ind-negative", "backproject", [P, "--poses", POSES, "--ind", "{C}/i.pkl", *bp],
        "--ind with -1", setup=pkl("i.pkl", lambda b: [np.array([-1, 2])]))
    add("backproject-ind-floats", "backproject", [P, "--poses", POSES, "--ind", "{C}/i.pkl", *bp],
        "--ind holding 0.5", setup=pkl("i.pkl", lambda b: [np.array([0.5, 2.0])]))
    add("backproject-batch-0", "backproject", [P, "--poses", POSES, *bp, "-b", "0"], "-b 0")
    add("backproject-wiener-negative", "backproject", [P, "--poses", POSES, *bp, "--wiener-snr", "-1"],
        "--wiener-snr -1")
    add("backproject-first-0", "backproject", [P, "--poses", POSES, *bp, "--first", "0"], "--first 0")
    add("backproject-output-over-input", "backproject", ["{C}/p.mrcs", "--poses", POSES, "-o", "{C}/p.mrcs"],
        "-o names the input stack", setup=copy("synth/particles.mrcs", "p.mrcs"))
    add("backproject-existing-output", "backproject", [P, "--poses", POSES, *bp], "output exists",
        setup=write_bytes("vol.mrc", b"earlier volume"))
    add("backproject-device-cuda9", "backproject", [P, "--poses", POSES, *bp, "--device", "cuda:9"],
        "--device cuda:9 (absent)")

    # ---- write-subset
    add("write-subset-star-ok", "write-subset", [STAR, "--ind", "{B}/ind.pkl", "-o", "{C}/sub.star"], "valid .star",
        expect="ok")
    add("write-subset-cs-ok", "write-subset", [CS, "--ind", "{B}/ind.pkl", "-o", "{C}/sub.cs"], "valid .cs",
        expect="ok")
    add("write-subset-ind-out-of-range", "write-subset", [STAR, "--ind", "{C}/i.pkl", "-o", "{C}/s.star"],
        "--ind 999 of 64", setup=pkl("i.pkl", lambda b: [np.array([1, 999])]))
    add("write-subset-ind-duplicates", "write-subset", [STAR, "--ind", "{C}/i.pkl", "-o", "{C}/s.star"],
        "--ind with a repeated index", setup=pkl("i.pkl", lambda b: [np.array([1, 1, 2])]))
    add("write-subset-ind-2d", "write-subset", [STAR, "--ind", "{C}/i.pkl", "-o", "{C}/s.star"],
        "--ind as a 2-D array", setup=pkl("i.pkl", lambda b: [np.zeros((2, 2), dtype=int)]))
    add("write-subset-ind-code", "write-subset", [STAR, "--ind", "{C}/evil.pkl", "-o", "{C}/s.star"],
        "crafted pickle as --ind", setup=crafted_pickle("evil.pkl"))
    add("write-subset-bad-output-type", "write-subset", [STAR, "--ind", "{B}/ind.pkl", "-o", "{C}/s.txt"],
        "-o with a .txt suffix")
    add("write-subset-output-over-input", "write-subset", ["{C}/p.star", "--ind", "{B}/ind.pkl", "-o", "{C}/p.star"],
        "-o names the input .star", setup=copy("synth/particles.star", "p.star"))
    add("write-subset-existing-output", "write-subset", [STAR, "--ind", "{B}/ind.pkl", "-o", "{C}/s.star"],
        "output exists", setup=write_bytes("s.star", b"earlier subset"))
    add("write-subset-kind-mismatch", "write-subset", [STAR, "--ind", "{B}/ind.pkl", "-o", "{C}/s.cs"],
        ".cs subset of a .star")

    # ---- train
    tr = ["--ctf", CTF, "--epochs", "1", *TINY_TRAIN]
    add("train-ok", "train", [P, "-o", "{C}/out", *tr], "valid tiny run", expect="ok")
    add("train-ctf-count", "train", [P, "-o", "{C}/out", "--ctf", "{C}/c.pkl", "--epochs", "1", *TINY_TRAIN],
        "CTF for 10 particles of 64", setup=pkl("c.pkl", ctf_with(lambda t: t[:10])))
    add("train-ctf-box", "train", [P, "-o", "{C}/out", "--ctf", "{C}/c.pkl", "--epochs", "1", *TINY_TRAIN],
        "CTF written for a 32-px box", setup=pkl("c.pkl", ctf_with(lambda t: _set(t, (slice(None), 0), 32.0))))
    add("train-zdim-negative", "train", [P, "-o", "{C}/out", *tr[:-2], "--zdim", "-1"], "--zdim -1")
    add("train-batch-0", "train", [P, "-o", "{C}/out", *tr, "-b", "0"], "-b 0")
    add("train-lr-negative", "train", [P, "-o", "{C}/out", *tr, "--lr", "-1"], "--lr -1")
    add("train-epochs-0", "train", [P, "-o", "{C}/out", "--ctf", CTF, "--epochs", "0", *TINY_TRAIN], "--epochs 0")
    add("train-max-images-negative", "train", [P, "-o", "{C}/out", "--ctf", CTF, "--max-images", "-5",
                                               *TINY_TRAIN], "--max-images -5")
    add("train-time-limit-negative", "train", [P, "-o", "{C}/out", *tr, "--time-limit", "-1"], "--time-limit -1")
    add("train-load-missing", "train", [P, "-o", "{C}/out", *tr, "--load", "{C}/nope.pt"], "--load missing file")
    add("train-load-garbage", "train", [P, "-o", "{C}/out", *tr, "--load", "{C}/ck.pt"], "--load garbage file",
        setup=write_bytes("ck.pt", b"garbage" * 100))
    add("train-load-code", "train", [P, "-o", "{C}/out", *tr, "--load", "{C}/ck.pt"],
        "--load crafted checkpoint that runs a command", setup=crafted_torch("ck.pt"))
    add("train-poses-nan", "train", [P, "-o", "{C}/out", *tr, "--poses", "{C}/p.pkl"], "--poses with NaN",
        setup=pkl("p.pkl", poses_with(lambda r, t: (_set(r, (0, 0, 0), np.nan), t))))
    add("train-poses-count", "train", [P, "-o", "{C}/out", *tr, "--poses", "{C}/p.pkl"],
        "--poses for 10 particles of 64", setup=pkl("p.pkl", poses_with(lambda r, t: (r[:10], t[:10]))))
    add("train-outdir-is-file", "train", [P, "-o", "{C}/f", *tr], "output folder is a file", setup=file_at("f"))
    add("train-existing-run", "train", [P, "-o", "{C}/run", *tr], "folder holds an earlier run",
        setup=copy("run", "run"))
    add("train-outdir-holds-input", "train", ["{C}/p.mrcs", "-o", "{C}", *tr, "--overwrite"],
        "output folder is the input's folder, --overwrite", setup=copy("synth/particles.mrcs", "p.mrcs"))
    add("train-device-cuda9", "train", [P, "-o", "{C}/out", *tr, "--device", "cuda:9"], "--device cuda:9 (absent)")
    add("train-gt-labels-count", "train", [P, "-o", "{C}/out", *tr, "--gt-labels", "{C}/l.pkl"],
        "--gt-labels for 5 particles of 64", setup=pkl("l.pkl", lambda b: [np.zeros(5, dtype=np.int64)]))
    add("train-disk-full", "train", [P, "-o", "{C}/out", *tr], "disk full while writing (simulated)",
        fsize_limit=20_000)
    long_run = ["--ctf", CTF, "--epochs", "400", *TINY_TRAIN, "--checkpoint-every", "128"]
    add("train-sigterm", "train", [P, "-o", "{C}/out", *long_run], "SIGTERM during training", expect="signal",
        signal=signal.SIGTERM)
    add("train-sigint", "train", [P, "-o", "{C}/out", *long_run], "SIGINT (Ctrl-C) during training", expect="signal",
        signal=signal.SIGINT)

    # ---- infer
    add("infer-ok", "infer", [RUN, P, "-o", "{C}/inf", "--ctf", CTF], "valid", expect="ok")
    add("infer-run-missing", "infer", ["{C}/norun", P, "-o", "{C}/inf", "--ctf", CTF], "run folder missing")
    add("infer-run-without-weights", "infer", ["{C}/run", P, "-o", "{C}/inf", "--ctf", CTF], "run folder without weights.pt",
        setup=lambda b, c: (c / "run").mkdir())
    add("infer-weights-code", "infer", ["{C}/run", P, "-o", "{C}/inf", "--ctf", CTF], "crafted weights.pt that runs a command",
        setup=crafted_torch("run/weights.pt", copy_run=True))
    add("infer-weights-truncated", "infer", ["{C}/run", P, "-o", "{C}/inf", "--ctf", CTF], "weights.pt cut in half",
        setup=chain(copy("run", "run"), lambda b, c: (c / "run/weights.pt").write_bytes(
            (b / "run/weights.pt").read_bytes()[:2000])))
    add("infer-box-mismatch", "infer", [RUN, "{C}/small.mrcs", "-o", "{C}/inf", "--ctf", CTF], "8-px particles for a 16-px run",
        setup=stack("small.mrcs", lambda x: x[:, ::2, ::2]))
    add("infer-batch-0", "infer", [RUN, P, "-o", "{C}/inf", "--ctf", CTF, "-b", "0"], "-b 0")
    add("infer-existing-output", "infer", [RUN, P, "-o", "{C}/inf", "--ctf", CTF], "output folder holds results",
        setup=write_bytes("inf/z.pkl", b"earlier"))
    add("infer-output-is-run", "infer", ["{C}/run", P, "-o", "{C}/run", "--ctf", CTF], "-o is the run folder",
        setup=copy("run", "run"))
    add("infer-search-bins-0", "infer", [RUN, P, "-o", "{C}/inf", "--ctf", CTF, "--search", "--search-bins", "0"],
        "--search-bins 0")

    # ---- eval-vol
    add("eval-vol-ok", "eval-vol", [RUN, "--z", "0", "0", "-o", "{C}/vols"], "valid z", expect="ok")
    add("eval-vol-run-missing", "eval-vol", ["{C}/norun", "--z", "0", "0", "-o", "{C}/vols"], "run folder missing")
    add("eval-vol-z-count", "eval-vol", [RUN, "--z", "0", "0", "0", "-o", "{C}/vols"], "3 values for zdim 2")
    add("eval-vol-z-nan", "eval-vol", [RUN, "--z", "nan", "0", "-o", "{C}/vols"], "--z nan 0")
    add("eval-vol-zfile-nan", "eval-vol", [RUN, "--zfile", "{C}/z.pkl", "-o", "{C}/vols"], "--zfile with NaN",
        setup=pkl("z.pkl", lambda b: [np.array([[0.0, np.nan]], dtype=np.float32)]))
    add("eval-vol-zfile-code", "eval-vol", [RUN, "--zfile", "{C}/evil.pkl", "-o", "{C}/vols"],
        "crafted pickle as --zfile", setup=crafted_pickle("evil.pkl"))
    add("eval-vol-existing-output", "eval-vol", [RUN, "--z", "0", "0", "-o", "{C}/vols"], "output exists",
        setup=write_bytes("vols/vol_000.mrc", b"earlier"))

    # ---- evaluate
    add("evaluate-ok", "evaluate", [RUN, "--gt-poses", POSES, "-o", "{C}/ev"], "valid", expect="ok")
    add("evaluate-gt-poses-missing", "evaluate", [RUN, "--gt-poses", "{C}/nope.pkl", "-o", "{C}/ev"],
        "--gt-poses missing")
    add("evaluate-gt-poses-count", "evaluate", [RUN, "--gt-poses", "{C}/p.pkl", "-o", "{C}/ev"],
        "--gt-poses for 10 particles of 64", setup=pkl("p.pkl", poses_with(lambda r, t: (r[:10], t[:10]))))
    add("evaluate-gt-labels-count", "evaluate", [RUN, "--gt-poses", POSES, "--gt-labels", "{C}/l.pkl", "-o",
                                                 "{C}/ev"], "--gt-labels for 5 particles of 64",
        setup=pkl("l.pkl", lambda b: [np.zeros(5, dtype=np.int64)]))
    add("evaluate-gt-vols-box", "evaluate", [RUN, "--gt-poses", POSES, "--gt-vols", "{C}/v.mrc", "-o", "{C}/ev"],
        "--gt-vols of the wrong box", setup=lambda b, c: _write_volume(c / "v.mrc", 8))
    add("evaluate-existing-output", "evaluate", [RUN, "--gt-poses", POSES, "-o", "{C}/ev"], "output holds results",
        setup=lambda b, c: _existing_eval(b, c))

    # ---- demo (error paths only: a demo run takes minutes)
    add("demo-minutes-0", "demo", ["-o", "{C}/demo", "--minutes", "0"], "--minutes 0")
    add("demo-minutes-negative", "demo", ["-o", "{C}/demo", "--minutes", "-3"], "--minutes -3")
    add("demo-outdir-is-file", "demo", ["-o", "{C}/f"], "output folder is a file", setup=file_at("f"))
    add("demo-config-missing", "demo", ["-o", "{C}/demo", "--config", "{C}/nope.yaml"], "--config missing")
    add("demo-existing-output", "demo", ["-o", "{C}/demo"], "folder holds an earlier REPORT.md",
        setup=write_bytes("demo/REPORT.md", b"earlier report"))
    return c


def _drop_field(table: np.ndarray, name: str) -> np.ndarray:
    keep = [n for n in table.dtype.names if n != name]
    out = np.zeros(len(table), dtype=[(n, table.dtype.fields[n][0]) for n in keep])
    for n in keep:
        out[n] = table[n]
    return out


def _write_volume(path: Path, d: int) -> None:
    from cryofire_nb.io import write_mrc

    write_mrc(path, np.random.default_rng(0).normal(size=(d, d, d)).astype(np.float32), 4.0)


def _existing_eval(base: Path, case: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cryofire_nb", "evaluate", str(base / "run"), "--gt-poses",
                        str(base / "synth" / "poses.pkl"), "-o", str(case / "ev")], env=ENV, capture_output=True)
    if r.returncode != 0:
        (case / "ev").mkdir(exist_ok=True)
        (case / "ev" / "metrics.json").write_text("{}")


# ---------------------------------------------------------------------------- running one case

def snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def output_problem(case_dir: Path, before: dict[str, str], zero_ok: bool = False) -> str | None:
    """NaN or all-zero data in the new .mrc/.mrcs/.pkl outputs of a successful run."""
    from cryofire_nb.io.mrc import read_mrc
    from cryofire_nb.io.pkl import load_pickles

    for p in sorted(case_dir.rglob("*")):
        rel = str(p.relative_to(case_dir))
        if not p.is_file() or (rel in before and p.suffix != ".pkl") or p.suffix not in (".mrc", ".mrcs", ".pkl"):
            continue
        try:
            arrays = [read_mrc(p).data] if p.suffix in (".mrc", ".mrcs") else \
                [np.asarray(a) for obj in load_pickles(p) for a in (obj if isinstance(obj, tuple) else (obj,))]
        except Exception as err:  # noqa: BLE001
            return f"{rel}: unreadable output ({err})"
        for a in arrays:
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return f"{rel}: NaN/inf in the output"
            if a.dtype.kind == "f" and a.size > 1 and not np.any(a) and not zero_ok:
                return f"{rel}: all zeros"
    return None


def error_lines(err: str, command: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"cryofire-nb {command}: error:")
            or (line.startswith("cryofire-nb ") and ": error: " in line)]


def run_case(case: Case, base: Path, work: Path) -> Outcome:
    case_dir = work / case.id
    if case_dir.exists():
        shutil.rmtree(case_dir, onerror=lambda f, p, e: (os.chmod(p, 0o755), f(p)))
    case_dir.mkdir(parents=True)
    if case.skip:
        return Outcome(case.id, case.command, case.what, "skipped", None, 0.0, case.skip, case.expect)
    if case.setup:
        case.setup(base, case_dir)
    before = snapshot(case_dir)
    args = [a.replace("{B}", str(base)).replace("{C}", str(case_dir)) for a in case.args]
    cmd = [sys.executable, "-m", "cryofire_nb", case.command, *args]

    def limits():
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # heard even when the sweep runs in the background
        if case.fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize_limit, case.fsize_limit))

    t0 = time.monotonic()
    rc, out, err = None, "", ""
    try:
        proc = subprocess.Popen(cmd, cwd=case_dir, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=limits)
        if case.signal is not None:
            ready = case_dir / "out" / "checkpoint.pt"
            while proc.poll() is None and not ready.exists() and time.monotonic() - t0 < case.timeout:
                time.sleep(0.05)
            if proc.poll() is None:
                proc.send_signal(case.signal)
        out, err = proc.communicate(timeout=max(case.timeout - (time.monotonic() - t0), 1))
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n[timed out]"
    seconds = time.monotonic() - t0
    after = snapshot(case_dir)
    changed = [p for p, h in before.items() if p not in case.may_change and after.get(p) != h]
    tail = "\n".join(err.strip().splitlines()[-3:])
    o = Outcome(case.id, case.command, case.what, "", rc, round(seconds, 1), "", case.expect, tail, changed)
    if (case_dir / "MARKER").exists():
        o.outcome, o.detail = "code-executed", "the marker file was created"
    elif changed:
        o.outcome, o.detail = "data-lost", f"changed or removed: {', '.join(changed[:3])}"
    elif "Traceback (most recent call last)" in err:
        o.outcome, o.detail = "traceback", err.strip().splitlines()[-1][:200]
    elif case.expect == "signal":
        want = 128 + int(case.signal)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        ok = rc == want and "resume with:" in last and (case_dir / "out" / "checkpoint.pt").exists() and \
            (case_dir / "out" / "poses.pkl").exists()
        o.outcome = "ok" if ok else "bad-exit"
        o.detail = last[:200] if ok else f"exit {rc}, last line: {last[:160]}"
    elif rc == 2:
        lines = error_lines(err, case.command)
        usage = "usage:" in err and "error:" in err
        if len(lines) == 1 or (usage and not lines):
            line = lines[0] if lines else [x for x in err.splitlines() if "error:" in x][-1]
            names = re.search(r"(/|\.\w{1,5}\b|(^|\s)-{1,2}\w)", line.split("error:", 1)[1]) is not None
            o.outcome = "ok-error" if names else "bad-exit"
            o.detail = line[:220] if names else f"the error names no file or flag: {line[:160]}"
        else:
            o.outcome, o.detail = "bad-exit", f"exit 2 with {len(lines)} error lines"
    elif rc == 0:
        problem = output_problem(case_dir, before, case.zero_ok)
        warned = any(": warning:" in line or line.startswith("warning:") for line in err.splitlines())
        if problem:
            o.outcome, o.detail = "silent-wrong", problem
        elif case.expect == "error" and not warned:
            o.outcome, o.detail = "silent-wrong", "exit 0 on input that should be refused"
        elif warned:
            o.outcome = "ok-warning"
            line = [line for line in err.splitlines() if "warning:" in line][0]
            o.detail = line[max(line.find("cryofire-nb "), 0):][:220]  # without a progress bar's carriage returns
        else:
            o.outcome, o.detail = "ok", (out.strip().splitlines() or [""])[-1][:200]
    else:
        o.outcome, o.detail = "bad-exit", f"exit {rc}: {tail[-200:]}"
    return o


# ---------------------------------------------------------------------------- report

def write_report(results: list[Outcome], out_md: Path, seconds: float) -> dict[str, int]:
    counts = {k: 0 for k in (*OK_CLASSES, *FAIL_CLASSES, "skipped")}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    out_md.parent.mkdir(parents=True, exist_ok=True)
    rows = ["| case | command | input or fault | outcome | exit | detail |", "|---|---|---|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {r.id} | {r.command} | {r.what} | **{r.outcome}** | {r.rc} | {detail} |")
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    out_md.write_text(f"# Bad-input sweep\n\n`python tools/bad_input_sweep.py`: {len(results)} cases in "
                      f"{seconds / 60:.1f} min. Counts: {summary}.\n\n" + "\n".join(rows) + "\n")
    out_md.with_suffix(".json").write_text(json.dumps(
        {"counts": counts, "cases": [vars(r) for r in results]}, indent=1) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at a time (default 2)")
    ap.add_argument("--only", help="run only the cases whose id contains one of these texts (comma-separated)")
    ap.add_argument("--workdir", type=Path, help="keep the work here (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bad_input_sweep.md")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # the set-ups write NaN stacks on purpose (mrcfile warns)
    wanted = [w for w in (args.only or "").split(",") if w]
    selected = [c for c in cases() if not wanted or any(w in c.id for w in wanted)]
    t0 = time.monotonic()
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bad_input_sweep_")
    root = args.workdir or Path(tmp.name)
    base = root / "base"
    if not (base / "run" / "weights.pt").exists():
        shutil.rmtree(base, ignore_errors=True)
        make_base(base)
    base_before = snapshot(base)
    work = root / "cases"
    print(f"{len(selected)} cases, {args.jobs} at a time, in {root}", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(run_case, c, base, work): c for c in selected}
        results = []
        for f in concurrent.futures.as_completed(futures):
            r = f.result()
            results.append(r)
            print(f"  {r.outcome:13s} {r.id}: {r.detail[:110]}", flush=True)
    order = {c.id: i for i, c in enumerate(selected)}
    results.sort(key=lambda r: order[r.id])
    changed = [p for p, h in base_before.items() if snapshot(base).get(p) != h]
    if changed:
        results.append(Outcome("base-inputs", "*", "the shared inputs after every case", "data-lost", None, 0.0,
                               f"changed: {', '.join(changed[:5])}"))
    counts = write_report(results, args.out, time.monotonic() - t0)
    print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if any(counts[k] for k in FAIL_CLASSES) else 0


if __name__ == "__main__":
    sys.exit(main())
