"""Property-based tests of the file readers (Hypothesis): any byte string, and any
mutation of a valid file (byte flips, truncation, insertion, deletion, line edits), either
reads or raises the package's :class:`~cryofire_nb.errors.InputError`, never another
exception (IndexError, struct.error, UnicodeDecodeError, MemoryError from a huge count,
...). An unchanged seed file reads back to its original content.

Example counts: ``FAST`` per test in ``make test``; the ``slow``-marked twins run ``SLOW``
each under ``make test-slow`` (``CRYOFIRE_FUZZ_EXAMPLES`` overrides the latter).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cryofire_nb.errors import InputError  # noqa: E402
from cryofire_nb.io import (CtfParams, ImageSource, Latents, Poses, make_cs_table, parse_cs_poses_ctf,  # noqa: E402
                            parse_star_poses_ctf, read_cs, read_ctf, read_indices, read_latents, read_mrc,
                            read_mrc_header, read_poses, read_star, write_cs, write_ctf, write_indices,
                            write_latents, write_mrc, write_poses, write_relion31_star)
from cryofire_nb.io.pkl import load_pickles  # noqa: E402

FAST = 60
SLOW = int(os.environ.get("CRYOFIRE_FUZZ_EXAMPLES", "1000"))
BUDGETS = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
N, D = 4, 8


def run_property(n_examples: int, strategy, check) -> None:
    """Run ``check`` on ``n_examples`` draws of ``strategy`` (no deadline: the machine is shared).
    The fast budget (``make test``) draws the same examples on every machine, so that a
    failure there reproduces anywhere; the slow budget explores new ones on every run."""
    @settings(max_examples=n_examples, deadline=None, database=None, derandomize=n_examples == FAST,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def prop(x):
        check(x)

    prop()


# ---------------------------------------------------------------------------- mutations

def mutations(seed: bytes, text: bool = False):
    """Strategy of byte strings: ``seed`` with 1-4 edits (flip, truncate, insert, delete,
    overwrite with a large integer), or for text files also a line duplicated / dropped /
    a token replaced."""
    n = len(seed)
    pos = st.integers(0, max(n - 1, 0))
    edit = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("truncate"), pos, st.just(0)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("int32"), pos, st.sampled_from([-1, 0, 1, 2 ** 31 - 1, -2 ** 31, 2 ** 30, 65535])),
    )
    if text:
        lines = seed.split(b"\n")
        tokens = st.sampled_from([b"", b"nan", b"inf", b"-1", b"0", b"1e400", b"abc", b"@", b"000000@x.mrcs",
                                  b"loop_", b"data_", b"data_optics", b"data_particles", b"_rlnImageName #1",
                                  b"_rlnOpticsGroup", b"\xff\xfe", b"99999999999999999999"])
        line_edit = st.one_of(
            st.tuples(st.just("dup_line"), st.integers(0, len(lines) - 1), st.just(0)),
            st.tuples(st.just("drop_line"), st.integers(0, len(lines) - 1), st.just(0)),
            st.tuples(st.just("token"), st.integers(0, len(lines) - 1), tokens),
        )
        edit = st.one_of(edit, line_edit)
    return st.lists(edit, min_size=1, max_size=4).map(lambda edits: apply_edits(seed, edits))


def apply_edits(data: bytes, edits) -> bytes:
    for kind, at, arg in edits:
        at = min(at, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data = data[:at] + bytes([data[at] ^ arg]) + data[at + 1:]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + arg + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + arg:]
        elif kind == "int32":
            data = data[:at] + int(arg).to_bytes(4, "little", signed=True) + data[at + 4:]
        elif kind in ("dup_line", "drop_line", "token"):
            lines = data.split(b"\n")
            at = min(at, len(lines) - 1)
            if kind == "dup_line":
                lines.insert(at, lines[at])
            elif kind == "drop_line":
                del lines[at]
            else:
                words = lines[at].split()
                if words:
                    words[len(words) // 2] = arg
                lines[at] = b" ".join(words) if words else arg
            data = b"\n".join(lines)
    return data


def reads_or_input_error(path: Path, data: bytes, read) -> object | None:
    """Write ``data`` to ``path`` and read it: the result, or None after an InputError.
    Any other exception fails the test (Hypothesis then shrinks the input)."""
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # input warnings (NaNs, odd values) are allowed
        try:
            return read(path)
        except InputError as err:
            assert str(err).startswith(str(path)), err  # the message names the file
            return None


# ---------------------------------------------------------------------------- seeds

@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Small valid files, written by the package's writers or by hand."""
    folder = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    out: dict[str, bytes] = {}
    write_mrc(folder / "stack.mrcs", rng.normal(size=(N, D, D)).astype(np.float32), 2.0)
    write_mrc(folder / "vol.mrc", rng.normal(size=(D, D, D)).astype(np.float32), 2.0)
    rots = np.linalg.qr(rng.normal(size=(N, 3, 3)))[0]
    rots *= np.sign(np.linalg.det(rots))[:, None, None]
    poses = Poses(rots.astype(np.float32), rng.uniform(-0.05, 0.05, size=(N, 2)).astype(np.float32))
    ctf = CtfParams.from_columns(image_size=D, pixel_size_angstrom=2.0, defocus_u_angstrom=np.full(N, 1e4),
                                 defocus_v_angstrom=np.full(N, 9e3), defocus_angle_deg=np.zeros(N), voltage_kv=300,
                                 cs_mm=2.7, amplitude_contrast=0.1)
    write_poses(folder / "poses.pkl", poses)
    write_ctf(folder / "ctf.pkl", ctf)
    write_latents(folder / "z.pkl", Latents(rng.normal(size=(N, 2)).astype(np.float32),
                                            rng.normal(size=(N, 2)).astype(np.float32)))
    write_indices(folder / "ind.pkl", np.array([0, 2, 3]))
    write_relion31_star(folder / "r31.star", [f"{i + 1:06d}@stack.mrcs" for i in range(N)], poses=poses, ctf=ctf)
    write_cs(folder / "p.cs", make_cs_table("stack.mrcs", N, D, 2.0, poses=poses, ctf=ctf))
    for name in ("stack.mrcs", "vol.mrc", "poses.pkl", "ctf.pkl", "z.pkl", "ind.pkl", "r31.star", "p.cs"):
        out[name] = (folder / name).read_bytes()
    r31 = out["r31.star"].decode()
    optics, particles = r31.split("data_particles")
    out["r31_optics_last.star"] = ("data_particles" + particles + "\n" + optics).encode()
    out["r5.star"] = ("\n# version 50001\n" + r31).encode()  # RELION 5 writes its version line first
    out["r30.star"] = ("\ndata_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n_rlnDefocusV #3\n_rlnDefocusAngle #4\n"
                       "_rlnVoltage #5\n_rlnSphericalAberration #6\n_rlnAmplitudeContrast #7\n"
                       "_rlnDetectorPixelSize #8\n_rlnMagnification #9\n_rlnAngleRot #10\n_rlnAngleTilt #11\n"
                       "_rlnAnglePsi #12\n_rlnOriginX #13\n_rlnOriginY #14\n"
                       + "".join(f"{i + 1:06d}@stack.mrcs 10000.0 9000.0 0.0 300.0 2.7 0.1 5.0 25000.0 "
                                 f"{10 * i}.0 {20 + i}.0 {5 * i}.0 0.5 -0.25\n" for i in range(N))).encode()
    return out


def star_reader(path: Path):
    table = read_star(path)
    parsed = parse_star_poses_ctf(table, d=D if "rlnImageSize" not in table.merged().columns else None)
    return table, parsed


def cs_reader(path: Path):
    return parse_cs_poses_ctf(read_cs(path), path=path)


def stack_reader(path: Path):
    src = ImageSource(path, lazy=True)
    return read_mrc_header(path), src.images(np.arange(len(src))), read_mrc(path).data


PKL_READERS = {"poses.pkl": read_poses, "ctf.pkl": read_ctf, "z.pkl": read_latents, "ind.pkl": read_indices}
STAR_SEEDS = ("r30.star", "r31.star", "r31_optics_last.star", "r5.star")


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if hasattr(a, "__dict__") and hasattr(b, "__dict__"):
        return vars(a).keys() == vars(b).keys() and all(_same(vars(a)[k], vars(b)[k]) for k in vars(a))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------- seeds read back

@pytest.mark.parametrize("name", ["stack.mrcs", "vol.mrc", *PKL_READERS, *STAR_SEEDS, "p.cs"])
def test_seed_files_read(seeds, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(seeds[name])
    if name.endswith(".star"):
        table, parsed = star_reader(path)
        assert len(table) == N and parsed.poses.rots.shape == (N, 3, 3) and len(parsed.ctf) == N
        assert np.allclose(parsed.ctf.pixel_size_angstrom, 2.0)
    elif name.endswith(".cs"):
        assert cs_reader(path).poses.rots.shape == (N, 3, 3)
    elif name.endswith(".pkl"):
        assert len(PKL_READERS[name](path)) in (N, 3)
    else:
        header, images, data = stack_reader(path)
        assert header.shape == data.shape and images.shape == data.shape


# ---------------------------------------------------------------------------- properties

def _check_mutated(tmp_path: Path, name: str, read, data: bytes, seed: bytes, baseline) -> None:
    got = reads_or_input_error(tmp_path / name, data, read)
    if data == seed:
        assert _same(got, baseline)


@pytest.mark.parametrize("n_examples", BUDGETS)
@pytest.mark.parametrize("name", ["stack.mrcs", "vol.mrc"])
def test_mrc_mutations_read_or_input_error(seeds, tmp_path, name, n_examples):
    baseline = stack_reader(_write(tmp_path / name, seeds[name]))
    run_property(n_examples, mutations(seeds[name]),
                 lambda data: _check_mutated(tmp_path, name, stack_reader, data, seeds[name], baseline))


@pytest.mark.parametrize("n_examples", BUDGETS)
def test_mrc_header_fields_read_or_input_error(seeds, tmp_path, n_examples):
    """Any value in any of the 56 header words (sizes, mode, nsymbt, ...): no other exception."""
    seed = seeds["stack.mrcs"]
    word = st.tuples(st.integers(0, 55), st.one_of(st.integers(-2 ** 31, 2 ** 31 - 1),
                                                   st.sampled_from([0, -1, 1, 2 ** 31 - 1, 2 ** 20, 3, 4, 12])))
    strat = st.lists(word, min_size=1, max_size=3).map(
        lambda ws: apply_edits(seed, [("int32", 4 * i, v) for i, v in ws]))
    run_property(n_examples, strat, lambda data: reads_or_input_error(tmp_path / "h.mrcs", data, stack_reader))


@pytest.mark.parametrize("n_examples", BUDGETS)
@pytest.mark.parametrize("name", STAR_SEEDS)
def test_star_mutations_read_or_input_error(seeds, tmp_path, name, n_examples):
    seed = seeds[name]
    table0, parsed0 = star_reader(_write(tmp_path / "m.star", seed))

    def check(data: bytes) -> None:
        got = reads_or_input_error(tmp_path / "m.star", data, star_reader)
        if data == seed:
            got = star_reader(tmp_path / "m.star")
            assert got[0].particles.equals(table0.particles) and _same(got[1], parsed0)

    run_property(n_examples, mutations(seed, text=True), check)


@pytest.mark.parametrize("n_examples", BUDGETS)
def test_cs_mutations_read_or_input_error(seeds, tmp_path, n_examples):
    baseline = cs_reader(_write(tmp_path / "m.cs", seeds["p.cs"]))
    run_property(n_examples, mutations(seeds["p.cs"]),
                 lambda data: _check_mutated(tmp_path, "m.cs", cs_reader, data, seeds["p.cs"], baseline))


@pytest.mark.parametrize("n_examples", BUDGETS)
@pytest.mark.parametrize("name", list(PKL_READERS))
def test_pkl_mutations_read_or_input_error(seeds, tmp_path, name, n_examples):
    read = PKL_READERS[name]
    baseline = read(_write(tmp_path / name, seeds[name]))
    run_property(n_examples, mutations(seeds[name]),
                 lambda data: _check_mutated(tmp_path, name, read, data, seeds[name], baseline))


@pytest.mark.parametrize("at", [319, 322])
def test_latents_whose_logvar_is_garbled_are_an_input_error(seeds, tmp_path, at):
    """Two mutations the slow budget found: a byte inserted into the second pickle of a
    (mu, logvar) z.pkl turns logvar into a one-element array or into text; reading it
    raised numpy's ValueError instead of the package's input error."""
    data = apply_edits(seeds["z.pkl"], [("insert", at, b".")])
    assert reads_or_input_error(tmp_path / "z.pkl", data, PKL_READERS["z.pkl"]) is None


ANY_READERS = {"x.mrcs": stack_reader, "x.star": star_reader, "x.cs": cs_reader, "x.pkl": load_pickles,
               "x.txt": lambda p: ImageSource(p)}


@pytest.mark.parametrize("n_examples", BUDGETS)
@pytest.mark.parametrize("name", list(ANY_READERS))
def test_any_bytes_read_or_input_error(tmp_path, name, n_examples):
    prefix = {"x.mrcs": b"", "x.star": b"data_\nloop_\n", "x.cs": b"\x93NUMPY", "x.pkl": b"\x80\x04",
              "x.txt": b""}[name]
    strat = st.binary(max_size=2048).map(lambda b: prefix + b) | st.binary(max_size=2048)
    run_property(n_examples, strat, lambda data: reads_or_input_error(tmp_path / name, data, ANY_READERS[name]))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_star_corrected_after_a_failed_read_reads_fresh(seeds, tmp_path):
    """starfile reads through linecache: a failed parse must not leave stale lines behind."""
    path = tmp_path / "p.star"
    good = seeds["r30.star"]
    path.write_bytes(good.replace(b"_rlnOriginY #14\n", b""))  # one column short: a parse error
    with pytest.raises(InputError):
        read_star(path)
    path.write_bytes(good)
    assert len(read_star(path)) == N


FIXTURE_FILES = ["cryodrgn/relion31.star", "cryodrgn/relion5.star", "cryodrgn/relion31.6opticsgroups.star",
                 "cryodrgn/empiar_10076_7.star", "cryodrgn/empiar_10076_7.cs", "cryodrgn/ctf1.pkl",
                 "cryodrgn/toy_rot_trans.pkl"]


def _fixture_reader(path: Path):
    if path.suffix == ".star":
        table = read_star(path)
        try:  # -D / --Apix may be needed (and then asked for): the parse is still exercised
            return table, parse_star_poses_ctf(table)
        except InputError:
            return table, None
    if path.suffix == ".cs":
        return read_cs(path)
    return load_pickles(path)


@pytest.mark.parametrize("n_examples", BUDGETS)
@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_fixture_mutations_read_or_input_error(fixtures_dir, tmp_path, name, n_examples):
    """Files written by cryoDRGN / RELION / cryoSPARC (``../shared/fixtures``), mutated."""
    src = fixtures_dir / name
    if not src.is_file():
        pytest.skip(f"{src} not present")
    seed = src.read_bytes()
    target = tmp_path / src.name
    run_property(n_examples, mutations(seed, text=src.suffix == ".star"),
                 lambda data: reads_or_input_error(target, data, _fixture_reader))


@pytest.mark.parametrize("name, edits", [
    ("z.pkl", [("flip", 138, 3)]),  # numpy's C reconstructor: SystemError
    ("r31.star", [("dup_line", 0, 0), ("dup_line", 15, 0)]),  # an optics row twice
    ("p.cs", [("flip", 37, 1)]),  # damaged header dictionary: SyntaxError / TokenError
], ids=["pkl-system-error", "star-optics-row-twice", "cs-header"])
def test_crashes_found_by_fuzzing_are_input_errors(seeds, tmp_path, name, edits):
    read = {"z.pkl": read_latents, "r31.star": star_reader, "p.cs": cs_reader}[name]
    path = tmp_path / name
    path.write_bytes(apply_edits(seeds[name], edits))
    with pytest.raises(InputError):
        read(path)
