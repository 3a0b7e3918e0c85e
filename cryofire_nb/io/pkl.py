"""Pickle files in cryoDRGN's formats: poses, CTF parameters, latents, indices.

============  ==============================================================
file          content
============  ==============================================================
poses         ``pickle.dump((rots (n,3,3), trans (n,2)))``, trans in fraction of
              the box; a rotations-only pickle ``rots (n,3,3)`` is also valid
CTF           float32 ``(n, 9)`` ``[D, Apix, DefocusU, DefocusV, DefocusAngle (deg),
              Voltage (kV), Cs (mm), w, PhaseShift (deg)]`` (see :mod:`.records`)
latents       float32 ``(n, k)``; cryoDRGN's ``train_vae`` writes ``mu`` then
              ``logvar`` as two consecutive pickles in one file (both forms read)
indices       int64 ``(m,)`` of kept particle indices (0-based)
============  ==============================================================

Pickles are read by :class:`DataUnpickler`, which rebuilds only numpy arrays, numpy
scalars and plain Python containers and numbers: a pickle that names any other Python
object (which could run code while loading) is refused with an InputError.

Loaders take ``n_expected`` (the number of particles in the stack) and raise
:class:`~cryofire_nb.errors.InputError` naming the file when counts differ; poses
and CTF with NaN/inf are rejected. Writers are atomic.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .. import validate
from ..errors import InputError
from ._atomic import atomic_path
from .records import CtfParams, Latents, Poses


# (module, name) pairs a cryoDRGN-format pickle may name. numpy arrays and scalars are
# rebuilt through these functions (``_frombuffer``: protocol 5; ``_codecs.encode``: the
# bytes of protocols 0-2); numpy 2 writes ``numpy._core``, numpy 1 ``numpy.core``.
# Everything else a pickle can name is a callable run while loading, hence refused.
_NUMPY_CORE = ("numpy.core", "numpy._core")
SAFE_PICKLE_GLOBALS = frozenset(
    {(f"{core}.multiarray", name) for core in _NUMPY_CORE for name in ("_reconstruct", "scalar")}
    | {(f"{core}.numeric", "_frombuffer") for core in _NUMPY_CORE}
    | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {("builtins", name) for name in ("tuple", "list", "dict", "int", "float", "complex", "str", "bytes", "bool")}
)


class DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds data only: numpy arrays and scalars, tuples, lists,
    dicts, numbers, strings and bytes. Any other object raises :class:`InputError`
    before it is created (``find_class`` runs before the object's constructor)."""

    def __init__(self, file, path: str | Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        # protocols 0-2 spell the builtins module by its Python 2 name
        if (module.replace("__builtin__", "builtins"), name) not in SAFE_PICKLE_GLOBALS:
            raise InputError(self.path, f"contains a Python object of type {module}.{name}, which a data file "
                                        "does not need; refusing to load it (it could run code)",
                             "pass a .pkl of numpy arrays written by cryoDRGN or cryofire_nb")
        return super().find_class(module, name)


def load_pickles(path: str | Path) -> list:
    """All objects pickled one after another in ``path`` (usually one, two for z.pkl),
    read with :class:`DataUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    objects = []
    # Read from memory: a damaged length field then reads as truncated data, where a file
    # object would first allocate the gigabytes the field claims.
    with io.BytesIO(path.read_bytes()) as f:
        while True:
            try:
                objects.append(DataUnpickler(f, path).load())
            except EOFError:
                break
            except InputError:  # a refused object is refused wherever it appears in the file
                raise
            except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError,
                    IndexError, KeyError, OverflowError, MemoryError, RecursionError,
                    SystemError) as err:  # SystemError: numpy's C reconstructor on some damaged arrays
                if objects:  # trailing garbage after valid pickles: keep what was read
                    break
                raise InputError(path, f"not a readable pickle file ({err})",
                                 "pass a .pkl written by cryoDRGN or cryofire_nb") from err
    if not objects:
        raise InputError(path, "the file is empty", "pass a .pkl written by cryoDRGN or cryofire_nb")
    return objects


def _array(path: Path, obj, what: str) -> np.ndarray:
    try:
        if hasattr(obj, "detach"):  # torch tensor
            obj = obj.detach().cpu().numpy()
        return np.asarray(obj)
    except Exception as err:  # pragma: no cover - exotic objects
        raise InputError(path, f"{what} is not an array ({type(obj).__name__})", None) from err


def check_count(path: str | Path, n: int, n_expected: int | None, what: str) -> None:
    """Raise InputError if a file with ``n`` rows does not match ``n_expected`` particles."""
    validate.check_count(path, n, n_expected, what)


# --------------------------------------------------------------------------- poses


def read_poses(path: str | Path, n_expected: int | None = None) -> Poses:
    """Read a pose pickle ``(rots, trans)`` or rotations-only ``rots``."""
    path = Path(path)
    obj = load_pickles(path)[0]
    if isinstance(obj, (tuple, list)) and len(obj) in (1, 2):
        rots = _array(path, obj[0], "rotations")
        trans = _array(path, obj[1], "translations") if len(obj) == 2 else None
    else:
        rots, trans = _array(path, obj, "rotations"), None
    if rots.ndim != 3 or rots.shape[1:] != (3, 3):
        raise InputError(path, f"rotations have shape {rots.shape}, expected (n, 3, 3)",
                         "pass a pose file written by parse-star/parse-cs or cryoDRGN")
    if trans is not None and trans.shape != (rots.shape[0], 2):
        raise InputError(path, f"translations have shape {trans.shape}, expected ({rots.shape[0]}, 2)",
                         "pass a pose file written by parse-star/parse-cs or cryoDRGN")
    check_count(path, rots.shape[0], n_expected, "pose file")
    validate.check_rotations(rots, path)
    if trans is not None:
        validate.check_shifts(trans, path)
    return Poses(rots, trans)


def write_poses(path: str | Path, poses: Poses) -> None:
    """Write ``(rots float32, trans float32)`` (or ``rots`` alone when there are no shifts)."""
    obj = poses.rots if poses.trans_frac is None else (poses.rots, poses.trans_frac)
    _dump(path, [obj])


# --------------------------------------------------------------------------- CTF


def read_ctf(path: str | Path, n_expected: int | None = None) -> CtfParams:
    """Read a CTF pickle, float32 ``(n, 9)``."""
    path = Path(path)
    table = _array(path, load_pickles(path)[0], "CTF table")
    if table.ndim != 2 or table.shape[1] != 9:
        raise InputError(path, f"CTF table has shape {table.shape}, expected (n, 9)",
                         "pass a CTF file written by parse-star/parse-cs or cryoDRGN")
    check_count(path, table.shape[0], n_expected, "CTF file")
    validate.check_ctf_table(table, path)
    return CtfParams(table)


def write_ctf(path: str | Path, ctf: CtfParams) -> None:
    _dump(path, [ctf.table.astype(np.float32)])


# --------------------------------------------------------------------------- latents


def read_latents(path: str | Path, n_expected: int | None = None) -> Latents:
    """Read latents: one pickle ``z (n, k)`` or two consecutive pickles ``mu``, ``logvar``."""
    path = Path(path)
    objs = load_pickles(path)
    mu = _array(path, objs[0], "latents")
    if mu.ndim == 1:
        mu = mu[:, None]
    if mu.ndim != 2:
        raise InputError(path, f"latents have shape {mu.shape}, expected (n, zdim)", "pass a z.pkl")
    logvar = None
    if len(objs) > 1:
        logvar = _array(path, objs[1], "latent log-variances").reshape(-1, *mu.shape[1:])
        if logvar.shape != mu.shape:
            raise InputError(path, f"second pickle (logvar) has shape {logvar.shape}, expected {mu.shape}",
                             "pass a z.pkl")
    check_count(path, mu.shape[0], n_expected, "latent file")
    validate.check_latents(mu, path)
    return Latents(mu, logvar)


def write_latents(path: str | Path, latents: Latents) -> None:
    """Write ``mu`` (and ``logvar`` as a second pickle when present), float32."""
    objs = [latents.mu] if latents.logvar is None else [latents.mu, latents.logvar]
    _dump(path, objs)


# --------------------------------------------------------------------------- indices


def read_indices(path: str | Path, n_total: int | None = None) -> np.ndarray:
    """Read kept-particle indices, int64 ``(m,)``; checked against ``n_total`` particles."""
    path = Path(path)
    return validate.check_indices(_array(path, load_pickles(path)[0], "indices"), path, n_total)


def write_indices(path: str | Path, ind) -> None:
    _dump(path, [np.asarray(ind, dtype=np.int64).reshape(-1)])


def _dump(path: str | Path, objects: list) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            for obj in objects:
                pickle.dump(obj, f, protocol=4)
