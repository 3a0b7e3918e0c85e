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
import pickletools
import re
from pathlib import Path

import numpy as np

from .. import validate
from ..errors import InputError
from ._atomic import atomic_path
from .records import CtfParams, Latents, Poses


# A pickle names the functions that rebuild its objects. For numpy arrays, dtypes and
# scalars those are numpy's C reconstructors, which trust their input: a damaged state
# tuple can crash the interpreter (seen: a segmentation fault from a flipped byte in a
# z.pkl). So every numpy name resolves to a builder here that checks the state and
# makes the array with ``np.frombuffer``; numpy 2 writes ``numpy._core``, numpy 1
# ``numpy.core``. Anything else a pickle can name is a callable run while loading,
# hence refused.
_NUMPY_CORE = ("numpy.core", "numpy._core")
_PLAIN_DTYPE = re.compile(r"[biufc]\d{1,2}|b1|\?")  # bool, integer, float, complex
_MAX_NDIM = 32  # numpy's own limit


class _Refused(ValueError):
    """A pickle whose numpy objects do not describe a plain array (becomes an InputError)."""


def _checked_dtype(dtype) -> np.dtype:
    if isinstance(dtype, _DtypeState):
        return dtype.resolve()
    raise _Refused(f"an array's dtype is {type(dtype).__name__}, not a numpy dtype")


def _checked_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if (not isinstance(shape, tuple) or len(shape) > _MAX_NDIM
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise _Refused(f"an array's shape {shape!r} is not a tuple of sizes")
    return shape


def _array_from_bytes(data, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    if isinstance(data, pickle.PickleBuffer):
        data = data.raw()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _Refused(f"an array's data is {type(data).__name__}, not bytes")
    n = 1
    for s in shape:
        n *= s
    if len(data) != n * dtype.itemsize:
        raise _Refused(f"an array of shape {shape} and dtype {dtype} needs {n * dtype.itemsize} bytes, "
                       f"the file holds {len(data)}")
    flat = np.frombuffer(bytes(data), dtype=dtype)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _DtypeState:
    """Stands for ``numpy.dtype(spec, align, copy)`` until its state (byte order) is set."""

    def __init__(self, spec=None, align=False, copy=True):
        if not isinstance(spec, str) or not _PLAIN_DTYPE.fullmatch(spec):
            raise _Refused(f"contains an array of dtype {spec!r}; a data file holds numbers only")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags): numpy
        # writes (3, order, None, None, None, -1, -1, 0) for every plain type
        if (not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "=")
                or any(x is not None for x in state[2:5]) or tuple(state[5:8]) not in ((), (-1, -1, 0))):
            raise _Refused(f"dtype state {state!r} is not that of a plain numeric type")
        if state[1] in ("<", ">") and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])

    def resolve(self) -> np.dtype:
        return self.dtype


class _ArrayState:
    """Stands for ``numpy.ndarray`` from ``_reconstruct`` until its state is set."""

    def __init__(self):
        self.array: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("an array's state is not numpy's (version, shape, dtype, order, data)")
        shape, dtype, fortran, data = state[-4:]
        self.array = _array_from_bytes(data, _checked_dtype(dtype), _checked_shape(shape), bool(fortran))


class _NdarrayType:
    """The ``numpy.ndarray`` a pickle passes to ``_reconstruct``; nothing else accepts it."""


def _reconstruct(cls=None, shape=None, typecode=None):
    if cls is not _NdarrayType:
        raise _Refused("an array is rebuilt from something other than numpy.ndarray")
    return _ArrayState()


def _scalar(dtype=None, data=None):
    dtype = _checked_dtype(dtype)
    return _array_from_bytes(data, dtype, (), False)[()]


def _frombuffer(buf=None, dtype=None, shape=None, order="C"):
    return _array_from_bytes(buf, _checked_dtype(dtype), _checked_shape(shape), order == "F")


def _encode(text=None, encoding="utf-8", *errors):
    # protocols 0-2 write bytes as codecs.encode(str, "latin1"); other codecs are refused
    # (some decompress, some are slow on crafted input)
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("bytes are encoded with something other than latin1")
    return text.encode("latin1")


def _bytes(*args):
    if args and not isinstance(args[0], (bytes, bytearray)):
        raise _Refused("bytes are built from something other than bytes")  # bytes(10**12) allocates
    return bytes(*args[:1])


SAFE_PICKLE_GLOBALS = (
    {(f"{core}.multiarray", "_reconstruct"): _reconstruct for core in _NUMPY_CORE}
    | {(f"{core}.multiarray", "scalar"): _scalar for core in _NUMPY_CORE}
    | {(f"{core}.numeric", "_frombuffer"): _frombuffer for core in _NUMPY_CORE}
    | {("numpy", "ndarray"): _NdarrayType, ("numpy", "dtype"): _DtypeState, ("_codecs", "encode"): _encode,
       ("builtins", "bytes"): _bytes}
    | {("builtins", t.__name__): t for t in (tuple, list, dict, float, complex, bool)}
)


def _resolve(obj, seen: dict):
    """``obj`` with every stand-in replaced by the numpy object it describes."""
    if isinstance(obj, _ArrayState):
        if obj.array is None:
            raise _Refused("an array is named without its data")
        return obj.array
    if isinstance(obj, _DtypeState):
        return obj.resolve()
    if isinstance(obj, (tuple, list, dict)):
        if id(obj) in seen:
            return seen[id(obj)]
        if isinstance(obj, tuple):
            out = tuple(_resolve(x, seen) for x in obj)
            seen[id(obj)] = out
            return out
        seen[id(obj)] = obj  # lists and dicts are fixed in place, so a cycle stays a cycle
        if isinstance(obj, list):
            obj[:] = [_resolve(x, seen) for x in obj]
        else:
            items = [(_resolve(k, seen), _resolve(v, seen)) for k, v in obj.items()]
            obj.clear()
            obj.update(items)
        return obj
    if obj is _NdarrayType:
        raise _Refused("numpy.ndarray is named outside an array")
    return obj


class DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds data only: numpy arrays and scalars of plain numeric
    dtypes, tuples, lists, dicts, numbers, strings and bytes. Any other object raises
    :class:`InputError` before it is created (``find_class`` runs before the object's
    constructor), and numpy objects are rebuilt by checked builders (see above)."""

    def __init__(self, file, path: str | Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        # protocols 0-2 spell the builtins module by its Python 2 name
        builder = SAFE_PICKLE_GLOBALS.get((module.replace("__builtin__", "builtins"), name))
        if builder is None:
            raise InputError(self.path, f"contains a Python object of type {module}.{name}, which a data file "
                                        "does not need; refusing to load it (it could run code)",
                             "pass a .pkl of numpy arrays written by cryoDRGN or cryofire_nb")
        return builder

    def load(self):
        return _resolve(super().load(), {})


def load_pickles(path: str | Path) -> list:
    """All objects pickled one after another in ``path`` (usually one, two for z.pkl),
    read with :class:`DataUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", "check the path")
    objects = []
    # Each pickle's opcodes are walked first (pickletools reads only the bytes present):
    # the unpickler allocates what a length field claims before reading, so a damaged
    # field could ask for exabytes, or for gigabytes that the kernel kills us for.
    with io.BytesIO(path.read_bytes()) as f:
        while True:
            start = f.tell()
            if not f.read(1):
                break
            f.seek(start)
            try:
                for _ in pickletools.genops(f):
                    pass
                f.seek(start)
                objects.append(DataUnpickler(f, path).load())
            except EOFError:
                break
            except InputError:  # a refused object is refused wherever it appears in the file
                raise
            except _Refused as err:
                raise InputError(path, f"{err}; refusing to load it",
                                 "pass a .pkl of numpy arrays written by cryoDRGN or cryofire_nb") from err
            except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError,
                    IndexError, KeyError, OverflowError, MemoryError, RecursionError,
                    UnicodeError) as err:
                if objects:  # trailing garbage after valid pickles: keep what was read
                    break
                raise InputError(path, f"not a readable pickle file ({err})",
                                 "pass a .pkl written by cryoDRGN or cryofire_nb") from err
    if not objects:
        raise InputError(path, "the file is empty", "pass a .pkl written by cryoDRGN or cryofire_nb")
    return objects


def _numeric(path: Path, arr: np.ndarray, what: str) -> np.ndarray:
    """``arr`` if it holds numbers (booleans, integers or floats), else an InputError."""
    if arr.dtype.kind not in "biuf":
        raise InputError(path, f"{what} hold {arr.dtype} values, not numbers", "pass a z.pkl written by "
                         "cryofire-nb or cryoDRGN")
    return arr


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
    _dump(path, [ctf.numpy()])


# --------------------------------------------------------------------------- latents


def read_latents(path: str | Path, n_expected: int | None = None) -> Latents:
    """Read latents: one pickle ``z (n, k)`` or two consecutive pickles ``mu``, ``logvar``."""
    path = Path(path)
    objs = load_pickles(path)
    mu = _numeric(path, _array(path, objs[0], "latents"), "latents")
    if mu.ndim == 1:
        mu = mu[:, None]
    if mu.ndim != 2:
        raise InputError(path, f"latents have shape {mu.shape}, expected (n, zdim)", "pass a z.pkl")
    logvar = None
    if len(objs) > 1:
        logvar = _numeric(path, _array(path, objs[1], "latent log-variances"), "latent log-variances")
        if logvar.size != mu.size:
            raise InputError(path, f"second pickle (logvar) has shape {logvar.shape}, expected {mu.shape}",
                             "pass a z.pkl")
        logvar = logvar.reshape(mu.shape)
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
