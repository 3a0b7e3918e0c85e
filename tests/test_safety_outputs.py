"""Nothing lost: every writing command refuses an existing output unless --overwrite, never
writes over one of its own inputs (even with --overwrite), finds an unwritable location
before the work, and leaves no temporary file and no half output on a full disk."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from cryofire_nb.cli import main
from cryofire_nb.errors import InputError
from cryofire_nb.io import read_mrc, write_indices, write_mrc
from cryofire_nb.io.outputs_guard import check_writable, guard_files, guard_folder
from cryofire_nb.train.synthetic import make_synthetic_set
from cli_checks import one_line_error

DEMO = Path(__file__).resolve().parents[1] / "data_demo"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synth"), n=32, d=16, snr=2.0, seed=4)


def tiny(epochs: int = 1, seed: int = 0) -> list[str]:
    """A tiny amortised run: seconds on a CPU."""
    return ["--method", "amortised", "--epochs", str(epochs), "--encoder-channels", "4", "4", "4",
            "--encoder-hidden", "16", "--decoder", "voxel", "--zdim", "1", "-b", "16", "--no-progress",
            "--device", "cpu", "--seed", str(seed)]


TINY = tiny()


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(out), *TINY]) == 0
    return out


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def stack(path, n=6, d=16, seed=0):
    write_mrc(path, np.random.default_rng(seed).standard_normal((n, d, d)).astype(np.float32), 2.0)
    return path


# --------------------------------------------------------------------------- the guard itself


def test_guard_files_rules(tmp_path):
    a, b = tmp_path / "a.pkl", tmp_path / "b.pkl"
    a.write_bytes(b"x")
    assert guard_files([b], [a]) == [b]
    with pytest.raises(InputError, match="already exists"):
        guard_files([a])
    guard_files([a], overwrite=True)
    with pytest.raises(InputError, match="also an input"):
        guard_files([tmp_path / "." / "a.pkl"], [a], overwrite=True)
    with pytest.raises(InputError, match="two different outputs"):
        guard_files([b, tmp_path / "b.pkl"])
    (tmp_path / "link.pkl").symlink_to(a)
    with pytest.raises(InputError, match="also an input"):
        guard_files([tmp_path / "link.pkl"], [a], overwrite=True)


def test_guard_folder_rules(tmp_path):
    out = tmp_path / "out"
    assert guard_folder(out, products=["x.pkl"]) is False and not out.exists()  # checking creates nothing
    out.mkdir()
    (out / "other.txt").write_text("")
    guard_folder(out, products=["x.pkl"])  # unrelated files are not results
    (out / "x.pkl").write_bytes(b"")
    with pytest.raises(InputError, match=r"already holds results \(x.pkl\)"):
        guard_folder(out, products=["x.pkl"])
    guard_folder(out, products=["x.pkl"], overwrite=True)
    (out / "in.mrcs").write_bytes(b"")
    with pytest.raises(InputError, match="holds the input"):
        guard_folder(out, [out / "in.mrcs"], products=["x.pkl"], overwrite=True)
    with pytest.raises(InputError, match="input folder"):
        guard_folder(out, [tmp_path / "out"], overwrite=True)
    (out / "checkpoint.pt").write_bytes(b"")
    assert guard_folder(out, [out / "checkpoint.pt"], products=["x.pkl"], resume_from=out / "checkpoint.pt")


def test_unwritable_location_is_found_before_the_work(tmp_path):
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_writable(f / "sub" / "deeper")
    with pytest.raises(InputError, match="is a file, not a folder"):
        guard_files([f / "out.mrcs"])


# --------------------------------------------------------------------------- downsample


def test_downsample_onto_its_input_is_refused(tmp_path, capsys):
    src = stack(tmp_path / "in.mrcs")
    before = src.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["downsample", str(src), "-D", "8", "-o", str(src), "--no-progress", *extra]) == 2
        one_line_error(capsys, "in.mrcs", "also an input")
    assert src.read_bytes() == before


def test_downsample_onto_a_stack_named_by_its_star_is_refused(tmp_path, capsys):
    src = stack(tmp_path / "s.mrcs")
    star = tmp_path / "p.star"
    star.write_text("data_\nloop_\n_rlnImageName\n" + "".join(f"{i}@s.mrcs\n" for i in range(1, 7)))
    before = src.read_bytes()
    assert main(["downsample", str(star), "-D", "8", "-o", str(src), "--no-progress", "--overwrite"]) == 2
    one_line_error(capsys, "s.mrcs", "also an input")
    assert src.read_bytes() == before


def test_downsample_existing_output_needs_overwrite(tmp_path, capsys):
    src, out = stack(tmp_path / "in.mrcs"), stack(tmp_path / "out.mrcs", seed=1)
    before = out.read_bytes()
    assert main(["downsample", str(src), "-D", "8", "-o", str(out), "--no-progress"]) == 2
    one_line_error(capsys, "out.mrcs", "already exists", "--overwrite")
    assert out.read_bytes() == before
    assert main(["downsample", str(src), "-D", "8", "-o", str(out), "--no-progress", "--overwrite"]) == 0
    assert read_mrc(out).data.shape == (6, 8, 8)


def test_downsample_into_an_impossible_folder(tmp_path, capsys):
    src = stack(tmp_path / "in.mrcs")
    (tmp_path / "plain").write_text("")
    assert main(["downsample", str(src), "-D", "8", "-o", str(tmp_path / "plain" / "x.mrcs"), "--no-progress"]) == 2
    one_line_error(capsys, "plain", "not a folder")


@pytest.mark.parametrize("where", ["reserve", "write"])
def test_downsample_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, where):
    from cryofire_nb.io import mrc

    src = stack(tmp_path / "in.mrcs", n=12)
    out_dir = tmp_path / "out"
    out = stack(out_dir / "old.mrcs", seed=3)  # an earlier output, replaced only by a complete new one
    before = out.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "reserve":
        monkeypatch.setattr(mrc.os, "posix_fallocate", full)
    else:
        real = mrc.StackWriter.write

        def write(self, start, images):  # the second chunk finds the disk full
            if start > 0:
                full()
            real(self, start, images)

        monkeypatch.setattr(mrc.StackWriter, "write", write)
    rc = main(["downsample", str(src), "-D", "8", "-o", str(out), "--chunk", "4", "--no-progress", "--overwrite"])
    assert rc == 2
    one_line_error(capsys, "old.mrcs", "no space left")
    assert sorted(p.name for p in out_dir.iterdir()) == ["old.mrcs"]  # no temporary stack left behind
    assert out.read_bytes() == before


# --------------------------------------------------------------------------- write-subset, parse-*


def test_write_subset_onto_its_input_is_refused(tmp_path, capsys):
    star = tmp_path / "in.star"
    star.write_text("data_\nloop_\n_rlnImageName\n1@a.mrcs\n2@a.mrcs\n3@a.mrcs\n")
    before = star.read_bytes()
    write_indices(tmp_path / "ind.pkl", [0, 2])
    for extra in ([], ["--overwrite"]):
        assert main(["write-subset", str(star), "--ind", str(tmp_path / "ind.pkl"), "-o", str(star), *extra]) == 2
        one_line_error(capsys, "in.star", "also an input")
    assert star.read_bytes() == before
    out = tmp_path / "out.star"
    out.write_text("keep")
    assert main(["write-subset", str(star), "--ind", str(tmp_path / "ind.pkl"), "-o", str(out)]) == 2
    one_line_error(capsys, "out.star", "already exists")
    assert out.read_text() == "keep"
    assert main(["write-subset", str(star), "--ind", str(tmp_path / "ind.pkl"), "-o", str(out), "--overwrite"]) == 0
    assert out.read_text().count("@a.mrcs") == 2


def test_parse_star_outputs(fixtures_dir, tmp_path, capsys):
    star = fixtures_dir / "cryodrgn" / "relion31.star"
    same = tmp_path / "x.pkl"
    assert main(["parse-star", str(star), "--poses", str(same), "--ctf", str(same)]) == 2
    one_line_error(capsys, "x.pkl", "two different outputs")
    same.write_bytes(b"old")
    assert main(["parse-star", str(star), "--poses", str(same)]) == 2
    one_line_error(capsys, "x.pkl", "already exists")
    assert same.read_bytes() == b"old"
    assert main(["parse-star", str(star), "--poses", str(same), "--overwrite"]) == 0


# --------------------------------------------------------------------------- backproject


def test_backproject_existing_output_needs_overwrite(synth, tmp_path, capsys):
    out = tmp_path / "vol.mrc"
    args = ["backproject", str(synth.particles), "--poses", str(synth.poses), "--ctf", str(synth.ctf),
            "-o", str(out), "--oversample", "1"]
    (tmp_path / "vol.half_a.mrc").write_bytes(b"old half map")
    assert main(args) == 2
    one_line_error(capsys, "vol.half_a.mrc", "already exists")
    assert not out.exists() and (tmp_path / "vol.half_a.mrc").read_bytes() == b"old half map"
    assert main([*args, "--overwrite"]) == 0
    assert read_mrc(tmp_path / "vol.half_a.mrc").data.shape == (16, 16, 16)


def test_backproject_over_its_pose_file_is_refused(synth, tmp_path, capsys):
    poses = tmp_path / "p.half_a.mrc"  # an input named like one of the outputs of -o p.mrc
    shutil.copy(synth.poses, poses)
    rc = main(["backproject", str(synth.particles), "--poses", str(poses), "-o", str(tmp_path / "p.mrc"),
               "--overwrite"])
    assert rc == 2
    one_line_error(capsys, "also an input")


# --------------------------------------------------------------------------- train, infer, eval-vol, evaluate


def test_train_over_a_finished_run_is_refused(synth, run, capsys):
    before = snapshot(run)
    rc = main(["train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(run), *TINY])
    assert rc == 2
    one_line_error(capsys, str(run), "already holds results", "--overwrite")
    assert snapshot(run) == before


def test_train_resume_in_its_own_folder_and_overwrite(synth, run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    rc = main(["train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(copy),
               "--load", str(copy / "checkpoint.pt"), *tiny(epochs=2)])
    assert rc == 0
    assert f"resuming in {copy}: its outputs will be replaced" in capsys.readouterr().out
    again = tmp_path / "again"
    shutil.copytree(run, again)
    old = (again / "weights.pt").read_bytes()
    rc = main(["train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(again), "--overwrite",
               *tiny(seed=5)])
    assert rc == 0 and (again / "weights.pt").read_bytes() != old


def test_train_into_the_data_folder_is_refused_even_with_overwrite(tmp_path, capsys):
    data = make_synthetic_set(tmp_path / "sim", n=16, d=16, seed=1)
    before = snapshot(data.folder)
    for extra in ([], ["--overwrite"]):
        rc = main(["train", str(data.particles), "--ctf", str(data.ctf), "-o", str(data.folder), *TINY, *extra])
        assert rc == 2
        one_line_error(capsys, str(data.folder))
    assert snapshot(data.folder) == before  # the simulator's poses.pkl is intact


def test_train_into_an_impossible_folder_fails_before_training(synth, tmp_path, capsys):
    (tmp_path / "plain").write_text("")
    rc = main(["train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(tmp_path / "plain" / "sub"), *TINY])
    assert rc == 2
    one_line_error(capsys, "plain", "not a folder")
    assert "trained" not in capsys.readouterr().out


def test_infer_into_the_run_folder_is_refused(synth, run, tmp_path, capsys):
    write_indices(tmp_path / "half.pkl", np.arange(0, synth.n, 2))
    before = snapshot(run)
    for extra in ([], ["--overwrite"]):
        rc = main(["infer", str(run), str(synth.particles), "--ctf", str(synth.ctf), "--ind",
                   str(tmp_path / "half.pkl"), "-o", str(run), *extra])
        assert rc == 2
        one_line_error(capsys, str(run), "input folder")
    assert snapshot(run) == before
    out = tmp_path / "inf"
    args = ["infer", str(run), str(synth.particles), "--ctf", str(synth.ctf), "-o", str(out)]
    assert main(args) == 0
    capsys.readouterr()  # the successful run's progress bars
    assert main(args) == 2
    one_line_error(capsys, "already holds results")
    assert main([*args, "--overwrite"]) == 0


def test_eval_vol_and_evaluate_outputs(synth, run, tmp_path, capsys):
    assert main(["eval-vol", str(run), "--z", "0", "-o", str(run), "--overwrite"]) == 2
    one_line_error(capsys, "input folder")
    vols = tmp_path / "vols"
    assert main(["eval-vol", str(run), "--z", "0", "-o", str(vols)]) == 0
    assert main(["eval-vol", str(run), "--z", "0", "-o", str(vols)]) == 2
    one_line_error(capsys, "vol_000.mrc", "--overwrite")
    assert main(["eval-vol", str(run), "--z", "0", "-o", str(vols), "--prefix", "other_"]) == 0
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    assert main(["evaluate", str(run), "--gt-poses", str(synth.poses), "-o", str(ev)]) == 2
    one_line_error(capsys, "metrics.json")
    assert (ev / "metrics.json").read_text() == "{}"


# --------------------------------------------------------------------------- simulate, demo


def test_simulate_overwrite_never_deletes_its_config(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("adk_open.pdb.gz", "adk_closed.pdb.gz"):
        shutil.copy(DEMO / name, out / name)
    cfg = out / "sim.yaml"
    cfg.write_text((DEMO / "demo_sim.yaml").read_text())
    rc = main(["simulate", str(cfg), "-o", str(out), "--n-particles", "4", "--overwrite"])
    assert rc == 2
    one_line_error(capsys, "holds the input")
    assert sorted(p.name for p in out.iterdir()) == ["adk_closed.pdb.gz", "adk_open.pdb.gz", "sim.yaml"]


def test_demo_refuses_an_earlier_report(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "REPORT.md").write_text("old")
    assert main(["demo", "-o", str(out), "--device", "cpu", "--minutes", "0.1"]) == 2
    one_line_error(capsys, "REPORT.md", "--overwrite")
    assert (out / "REPORT.md").read_text() == "old"


# --------------------------------------------------------------------------- every command


def test_every_writing_command_has_overwrite():
    import argparse

    from cryofire_nb.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"backproject", "demo", "downsample", "eval-vol", "evaluate", "infer", "parse-cs",
                                "parse-star", "simulate", "train", "write-subset"}  # a new command: guard it too
    for name, p in sub.choices.items():
        assert "--overwrite" in p._option_string_actions, name


def test_a_failed_run_over_earlier_results_leaves_their_config(synth, run, tmp_path, monkeypatch):
    from cryofire_nb.train import trainer

    again = tmp_path / "again"
    shutil.copytree(run, again)
    before = snapshot(again)

    def crash(self, limit_s):
        raise RuntimeError("crash in the training loop")

    monkeypatch.setattr(trainer.Trainer, "_loop", crash)
    with pytest.raises(RuntimeError, match="crash in the training loop"):
        main(["train", str(synth.particles), "--ctf", str(synth.ctf), "-o", str(again), "--overwrite",
              *tiny(seed=7)])
    assert snapshot(again) == before  # config.yaml still describes the weights beside it
