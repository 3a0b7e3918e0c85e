"""Simulation settings: dataclasses validated on construction, read from / written to YAML.

Example (``data_demo/demo_sim.yaml``; structure paths are relative to the YAML file)::

    structures: [adk_open.pdb.gz, adk_closed.pdb.gz]
    n_particles: 2000
    d: 32
    pixel_size_angstrom: 2.9
    seed: 0
    heterogeneity: {kind: continuous, n_path_volumes: 5}   # or {kind: discrete, weights: [0.7, 0.3]}
    views: {distribution: uniform}     # or {distribution: preferred, direction: [0, 0, 1], spread_deg: 20, fraction: 0.5}
    max_shift_px: 1.5
    ctf: {defocus_u_angstrom: [10000, 25000], astigmatism_angstrom: 300, voltage_kv: 300,
          cs_mm: 2.7, amplitude_contrast: 0.1, phase_shift_deg: 0, bfactor_angstrom2: 0}
    snr: 0.3                           # var(clean CTF-affected image) / var(noise); null = no noise
    invert_contrast: true
    density: {scattering: electron, bfactor_angstrom2: 50}  # or resolution_angstrom: 6

Any invalid value raises :class:`~cryofire_nb.errors.InputError` naming the YAML file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import InputError
from .density import SCATTERING_KINDS, bfactor_from_resolution

HETEROGENEITY_KINDS = ("continuous", "discrete")
VIEW_DISTRIBUTIONS = ("uniform", "preferred")


def _require(ok: bool, source, problem: str, fix: str) -> None:
    if not ok:
        raise InputError(source, problem, fix)


def _number(value, name: str, source) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _require(ok, source, f"{name} must be a finite number, got {value!r}", f"set {name} to a number")
    return float(value)


def _positive(value, name: str, source, allow_zero: bool = False) -> float:
    v = _number(value, name, source)
    _require(v > 0 or (allow_zero and v == 0), source, f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}",
             f"set {name} to a {'non-negative' if allow_zero else 'positive'} number")
    return v


@dataclass(frozen=True)
class CtfConfig:
    """CTF draws: defocus U uniform in the range, V = U - Uniform(0, astigmatism),
    astigmatism angle uniform in [0, 180) degrees; the rest fixed."""

    defocus_u_angstrom: tuple[float, float] = (10000.0, 25000.0)
    astigmatism_angstrom: float = 300.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    phase_shift_deg: float = 0.0
    bfactor_angstrom2: float = 0.0  # envelope exp(-B s^2 / 4); not stored in ctf.pkl
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        rng = self.defocus_u_angstrom
        _require(isinstance(rng, (list, tuple)) and len(rng) == 2, src,
                 f"ctf.defocus_u_angstrom must be [min, max], got {rng!r}", "e.g. defocus_u_angstrom: [10000, 25000]")
        lo, hi = (_positive(v, "ctf.defocus_u_angstrom", src) for v in rng)
        _require(lo <= hi, src, f"ctf.defocus_u_angstrom range [{lo}, {hi}] is reversed", "write [min, max]")
        object.__setattr__(self, "defocus_u_angstrom", (lo, hi))
        ast = _positive(self.astigmatism_angstrom, "ctf.astigmatism_angstrom", src, allow_zero=True)
        _require(ast < lo, src, f"ctf.astigmatism_angstrom {ast} must be below the smallest defocus {lo}",
                 "use a smaller astigmatism")
        _positive(self.voltage_kv, "ctf.voltage_kv", src)
        _positive(self.cs_mm, "ctf.cs_mm", src, allow_zero=True)
        w = _number(self.amplitude_contrast, "ctf.amplitude_contrast", src)
        _require(0 <= w < 1, src, f"ctf.amplitude_contrast must lie in [0, 1), got {w}", "typical values are 0.07-0.1")
        _number(self.phase_shift_deg, "ctf.phase_shift_deg", src)
        _positive(self.bfactor_angstrom2, "ctf.bfactor_angstrom2", src, allow_zero=True)


@dataclass(frozen=True)
class ViewConfig:
    """Viewing directions (third row of R): uniform on SO(3), or a fraction ``fraction``
    of particles whose view direction is within about ``spread_deg`` (2-D Gaussian on the
    tangent plane) of ``direction``, the rest uniform (preferred orientation)."""

    distribution: str = "uniform"
    direction: tuple[float, float, float] = (0.0, 0.0, 1.0)
    spread_deg: float = 20.0
    fraction: float = 1.0
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        _require(self.distribution in VIEW_DISTRIBUTIONS, src,
                 f"views.distribution must be one of {VIEW_DISTRIBUTIONS}, got {self.distribution!r}",
                 "use 'uniform' or 'preferred'")
        v = self.direction
        _require(isinstance(v, (list, tuple)) and len(v) == 3, src, f"views.direction must be [x, y, z], got {v!r}",
                 "give a 3-vector")
        v = tuple(_number(x, "views.direction", src) for x in v)
        _require(any(x != 0 for x in v), src, "views.direction is the zero vector", "give a non-zero 3-vector")
        object.__setattr__(self, "direction", v)
        _positive(self.spread_deg, "views.spread_deg", src)
        f = _number(self.fraction, "views.fraction", src)
        _require(0 <= f <= 1, src, f"views.fraction must lie in [0, 1], got {f}", "set a fraction between 0 and 1")


@dataclass(frozen=True)
class HeterogeneityConfig:
    """``continuous``: t ~ Uniform(0, 1) along the path through the states (ground truth
    ``conf.pkl``), plus ``n_path_volumes`` volumes at evenly spaced t. ``discrete``: state
    labels drawn with ``weights`` (normalised; ground truth ``labels.pkl``)."""

    kind: str = "continuous"
    weights: tuple[float, ...] | None = None
    n_path_volumes: int = 5
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        _require(self.kind in HETEROGENEITY_KINDS, src,
                 f"heterogeneity.kind must be one of {HETEROGENEITY_KINDS}, got {self.kind!r}",
                 "use 'continuous' or 'discrete'")
        if self.weights is not None:
            _require(self.kind == "discrete", src, "heterogeneity.weights is only used with kind: discrete",
                     "remove weights or set kind: discrete")
            _require(isinstance(self.weights, (list, tuple)) and len(self.weights) > 0, src,
                     f"heterogeneity.weights must be a list, got {self.weights!r}", "give one weight per structure")
            w = tuple(_positive(x, "heterogeneity.weights", src, allow_zero=True) for x in self.weights)
            _require(sum(w) > 0, src, "heterogeneity.weights sum to 0", "give at least one positive weight")
            object.__setattr__(self, "weights", w)
        n = self.n_path_volumes
        _require(isinstance(n, int) and not isinstance(n, bool) and (n == 0 or n >= 2), src,
                 f"heterogeneity.n_path_volumes must be 0 or an integer >= 2, got {n!r}", "e.g. 5")


@dataclass(frozen=True)
class DensityConfig:
    """Atom form factors (``electron`` or ``atomic_number``) and the global B-factor;
    ``resolution_angstrom`` (if set) replaces the B-factor by ``4 resolution^2``."""

    scattering: str = "electron"
    bfactor_angstrom2: float = 50.0
    resolution_angstrom: float | None = None
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        _require(self.scattering in SCATTERING_KINDS, src,
                 f"density.scattering must be one of {SCATTERING_KINDS}, got {self.scattering!r}",
                 "use 'electron' (recommended) or 'atomic_number'")
        _positive(self.bfactor_angstrom2, "density.bfactor_angstrom2", src, allow_zero=True)
        if self.resolution_angstrom is not None:
            _positive(self.resolution_angstrom, "density.resolution_angstrom", src)

    @property
    def effective_bfactor_angstrom2(self) -> float:
        if self.resolution_angstrom is not None:
            return bfactor_from_resolution(self.resolution_angstrom)
        return float(self.bfactor_angstrom2)


_SECTIONS = {"ctf": CtfConfig, "views": ViewConfig, "heterogeneity": HeterogeneityConfig, "density": DensityConfig}


@dataclass(frozen=True)
class SimConfig:
    """A simulated dataset. Structure paths relative to the YAML file are resolved on load."""

    structures: tuple[str, ...]
    n_particles: int
    d: int
    pixel_size_angstrom: float
    seed: int = 0
    heterogeneity: HeterogeneityConfig = field(default_factory=HeterogeneityConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    max_shift_px: float = 0.0
    ctf: CtfConfig | None = field(default_factory=CtfConfig)
    snr: float | None = 0.1
    invert_contrast: bool = True
    density: DensityConfig = field(default_factory=DensityConfig)
    snr_reference_particles: int = 1000  # signal variance measured on particles 0 .. this - 1
    source: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        paths = self.structures
        _require(isinstance(paths, (list, tuple)) and len(paths) >= 1 and all(isinstance(p, str) for p in paths), src,
                 f"structures must be a list of file names, got {paths!r}", "list the PDB/mmCIF files of the states")
        object.__setattr__(self, "structures", tuple(paths))
        for p in paths:
            _require(Path(p).is_file(), src, f"structure file {p} not found",
                     "paths are relative to the YAML file; check the name")
        het = self.heterogeneity
        if het.kind == "continuous":
            _require(len(paths) >= 2, src, "continuous heterogeneity needs at least two structures",
                     "list two or more states, or use kind: discrete")
        elif het.weights is not None:
            _require(len(het.weights) == len(paths), src,
                     f"{len(het.weights)} heterogeneity.weights for {len(paths)} structures",
                     "give one weight per structure")
        for name in ("n_particles", "d", "seed", "snr_reference_particles"):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool) and v >= (0 if name == "seed" else 1), src,
                     f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} integer, got {v!r}",
                     f"set {name} to an integer")
        _require(self.d % 2 == 0 and self.d >= 8, src, f"d must be even and >= 8, got {self.d}", "use e.g. d: 32 or 64")
        _positive(self.pixel_size_angstrom, "pixel_size_angstrom", src)
        shift = _positive(self.max_shift_px, "max_shift_px", src, allow_zero=True)
        _require(shift <= self.d / 4, src, f"max_shift_px {shift} is more than a quarter of the box ({self.d})",
                 "use a smaller shift or a larger box")
        if self.snr is not None:
            _positive(self.snr, "snr", src)
        _require(isinstance(self.invert_contrast, bool), src,
                 f"invert_contrast must be true or false, got {self.invert_contrast!r}", "write true or false")

    # ------------------------------------------------------------------ YAML

    @classmethod
    def from_dict(cls, raw: dict, source: str | Path | None = None, base_dir: str | Path | None = None) -> "SimConfig":
        """Build from a mapping (as read from YAML); structure paths resolved against ``base_dir``."""
        src = None if source is None else Path(source)
        _require(isinstance(raw, dict), src, "the file does not hold a YAML mapping", "see data_demo/demo_sim.yaml")
        raw = {k: v for k, v in raw.items() if k != "cryofire_nb_version"}
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = sorted(set(raw) - names)
        _require(not unknown, src, f"unknown settings {unknown}", f"valid settings are {sorted(names)}")
        kwargs = dict(raw)
        for key, sub in _SECTIONS.items():
            if key not in kwargs:
                kwargs[key] = sub(source=src)
                continue
            value = kwargs[key]
            if value is None and key == "ctf":
                continue
            _require(isinstance(value, dict), src, f"{key} must be a mapping, got {value!r}", f"see the {key} example")
            sub_names = {f.name for f in dataclasses.fields(sub)} - {"source"}
            bad = sorted(set(value) - sub_names)
            _require(not bad, src, f"unknown {key} settings {bad}", f"valid {key} settings are {sorted(sub_names)}")
            try:
                kwargs[key] = sub(**value, source=src)
            except TypeError as err:  # pragma: no cover - guarded by the name check
                raise InputError(src, f"bad {key} section ({err})", f"see the {key} example") from err
        base = Path(base_dir) if base_dir is not None else (src.parent if src is not None else Path.cwd())
        paths = kwargs.get("structures")
        if isinstance(paths, (list, tuple)):
            kwargs["structures"] = tuple(str((base / p).resolve()) if isinstance(p, str) else p for p in paths)
        missing = sorted({"structures", "n_particles", "d", "pixel_size_angstrom"} - set(kwargs))
        _require(not missing, src, f"missing settings {missing}", "add them (see data_demo/demo_sim.yaml)")
        return cls(**kwargs, source=src)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SimConfig":
        path = Path(path)
        _require(path.is_file(), path, "config file not found", "check the path")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise InputError(path, f"not valid YAML ({err})", "fix the syntax") from err
        except UnicodeDecodeError as err:  # a binary file passed by mistake
            raise InputError(path, f"not a text file ({err.reason} at byte {err.start})",
                             "pass the simulation settings (YAML)") from err
        return cls.from_dict(raw, source=path)

    def replace(self, **changes) -> "SimConfig":
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain mapping for YAML (tuples as lists, no ``source``)."""
        def clean(obj):
            if dataclasses.is_dataclass(obj):
                return {f.name: clean(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "source"}
            if isinstance(obj, (tuple, list)):
                return [clean(x) for x in obj]
            return obj
        return clean(self)

    def to_yaml(self, version: str | None = None) -> str:
        data = self.to_dict()
        if version is not None:
            data = {"cryofire_nb_version": version, **data}
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
