"""Presets: the settings a run takes when the command line leaves them open, and
ready-made configurations for a data set written by the simulator.

:func:`resolve_preset` is what ``cryofire-nb train`` uses: the method (pose table,
plain amortised, or known poses) and the box size and device pick the model and
optimiser settings; a value given explicitly always wins, and the preset's name and
every resolved value are printed and saved in ``config.yaml``.

Method ``table`` (the default for ab initio runs; :mod:`cryofire_nb.hetero`): voxel pose
search, heterogeneous refinement of a pose and latent table against a linear volume
basis, and an encoder distilled from the tables. Model: the released-code encoder
narrowed to 8 channels in its first block (doubling per halving block), a voxel decoder
``V0 + sum_k z_k U_k`` whose grids are the refinement's basis, ``n_basis`` conformational
components (z has that many columns), small batches with large learning rates. Measured
on the 32-px adenylate kinase sets of ``data_demo/`` (10,000 images, SNR 0.3, 20 minutes
on 2 CPU cores): see ``bench/results/``.

Method ``amortised``: the published recipe (paper encoder, hypervolume decoder, z of 8
dimensions, batch 64, Adam 1e-4, pose-only phase, frequency marching); on a CPU budget of
minutes its view directions collapse onto a great circle (the run warns when they do).
Method ``known`` (``--poses``): the encoder learns z only (cryoDRGN ``train_vae`` style),
with the same model defaults as the published recipe.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..model.encoder import n_blocks_for
from .config import TrainConfig

#: Settings a preset may fill (a TrainConfig field left None).
PRESET_FIELDS = ("encoder", "encoder_channels", "encoder_hidden", "decoder", "zdim", "n_basis", "batch_size", "lr",
                 "decoder_lr")

#: The published recipe's model and optimiser (also the known-pose default).
PAPER = dict(encoder="paper", encoder_channels=None, encoder_hidden=256, decoder="hypervolume", zdim=8,
             batch_size=64, lr=1e-4, decoder_lr=None)


def table_channels(d: int, first: int = 8, cap: int = 256) -> list[int]:
    """Conv widths of the small released-code encoder: ``first`` doubling per block, one
    width per halving block of a d-px image (d = 32: 8, 16, 32, 64)."""
    return [min(first * 2 ** i, cap) for i in range(n_blocks_for(d))]


def resolve_preset(d: int, device_type: str, method: str) -> tuple[str, dict]:
    """The preset for a ``d``-px box on ``device_type`` ("cpu" or "cuda") and ``method``
    ("table", "amortised" or "known"): its name and the values of :data:`PRESET_FIELDS`.
    Deterministic in its arguments."""
    if method not in ("table", "amortised", "known"):
        raise ValueError(f"unknown method {method!r}")
    if method != "table":
        return f"{method}-paper", dict(PAPER, n_basis=None)
    # The table's model is small on purpose: poses come from the search and refinement,
    # the encoder mostly learns to reproduce the tables; measured at d = 32 on 2 CPU cores
    # (wider encoders, zdim 8 and batch 64 needed about twice as many images for z).
    values = dict(encoder="released", encoder_channels=table_channels(d), encoder_hidden=128, decoder="voxel",
                  zdim=2, n_basis=2, batch_size=16, lr=1e-3, decoder_lr=3e-2)
    if device_type == "cuda":
        # a GPU step costs about the same at batch 16 and 128: larger batches keep it busy
        values.update(batch_size=128)
        return f"table-gpu-d{d}", values
    return f"table-cpu-d{d}", values


def apply_preset(cfg: TrainConfig, d: int, device_type: str) -> TrainConfig:
    """Fill the fields ``cfg`` leaves None from :func:`resolve_preset`; records the
    preset's name in ``cfg.preset``. Explicit values win. In the table method z is the
    latent table (``n_basis`` columns), so ``zdim`` follows ``n_basis``."""
    name, values = resolve_preset(d, device_type, cfg.method)
    given = {k: getattr(cfg, k) for k in PRESET_FIELDS if getattr(cfg, k) is not None}
    if cfg.method == "table":
        if "zdim" in given and "n_basis" not in given:
            given["n_basis"] = given["zdim"]
        elif "n_basis" in given and "zdim" not in given:
            given["zdim"] = given["n_basis"]
        if given.get("zdim", values["zdim"]) != given.get("n_basis", values["n_basis"]):
            raise InputError(None, f"train settings: the pose table's z has n_basis = {given['n_basis']} columns, "
                             f"but zdim = {given['zdim']} was asked for",
                             "pass only --n-basis (or only --zdim) with the table method")
    out = {**cfg.to_dict(), **values, **given}
    if out["encoder"] != "released" and "encoder_channels" not in given:
        out["encoder_channels"] = None  # the preset's widths are for the released-code encoder
    out["preset"] = name
    return TrainConfig.from_dict(out)


#: Known-pose CPU configuration: the released-code encoder narrowed to 8-64 channels, a
#: voxel decoder ``V0 + sum_k z_k U_k`` with 2 latent dimensions, batch 16. On the
#: two-state AdK set (SNR 0.3) the confusion error fell to about 0.04 after 10,000
#: images (~45 s); wider encoders, zdim 8 and batch 64 needed about twice as many images.
#: The four channel widths are for d = 32 (one per halving block); for another box pass
#: ``encoder_channels=None`` (the variant's default) or one width per block.
KNOWN_POSE_CPU = dict(encoder="released", encoder_channels=[8, 16, 32, 64], encoder_hidden=128,
                      decoder="voxel", zdim=2, batch_size=16, lr=1e-3, decoder_lr=3e-2)


#: The table method at d = 32 on a CPU, spelt out (what :func:`resolve_preset` gives there).
ABINIT_CPU = dict(KNOWN_POSE_CPU, method="table")


def simulated_train_config(data_dir: str | Path, outdir: str | Path, *, known_poses: bool = True,
                           truth: bool = True, preset: dict | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` for the simulated data set in ``data_dir``.

    known_poses: train with the true poses (``poses=poses.pkl``: the encoder predicts z
        only) and the full loss disc from the start (``march_start_px = d / 2``: frequency
        marching guards pose inference against local minima, which known poses do not have).
    truth: log metrics against ``poses.pkl`` and ``labels.pkl`` / ``conf.pkl`` during
        training (``gt_*``); the model never sees them.
    preset: settings applied first (e.g. :data:`KNOWN_POSE_CPU`); ``overrides`` last.
    """
    from ..io import ImageSource

    data = Path(data_dir)
    particles = data / "particles.mrcs"
    if not particles.is_file():
        raise InputError(data, "no particles.mrcs here", "pass the folder written by cryofire-nb simulate")
    d = ImageSource(particles).d
    kw: dict = dict(particles=str(particles), outdir=str(outdir),
                    command_line=f"simulated_train_config({data})")
    if (data / "ctf.pkl").is_file():
        kw["ctf"] = str(data / "ctf.pkl")
    if known_poses:
        kw.update(poses=str(data / "poses.pkl"), march_start_px=d / 2)
    if truth:
        kw["gt_poses"] = str(data / "poses.pkl")
        if (data / "labels.pkl").is_file():
            kw["gt_labels"] = str(data / "labels.pkl")
        elif (data / "conf.pkl").is_file():
            kw["gt_conf"] = str(data / "conf.pkl")
    kw.update(preset or {})
    kw.update(overrides)
    return TrainConfig(**kw)
