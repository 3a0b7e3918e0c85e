"""Ready-made training settings for a data set written by the simulator
(:func:`cryofire_nb.simulate.simulate_dataset`: ``particles.mrcs``, ``ctf.pkl``,
``poses.pkl`` and ``labels.pkl`` or ``conf.pkl`` in one folder).

:func:`simulated_train_config` fills in the file paths (and the ground truth for the
metrics logged during training); :data:`KNOWN_POSE_CPU` is a small model that learns z
within a few thousand images on two CPU cores when the poses are given (cryoDRGN
``train_vae`` style), measured on the d = 32 adenylate kinase sets of ``data_demo/``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .config import TrainConfig

#: Known-pose CPU configuration: the released-code encoder narrowed to 8-64 channels, a
#: voxel decoder ``V0 + sum_k z_k U_k`` with 2 latent dimensions, batch 16. On the
#: two-state AdK set (SNR 0.3) the confusion error fell to about 0.04 after 10,000
#: images (~45 s); wider encoders, zdim 8 and batch 64 needed about twice as many images.
#: The four channel widths are for d = 32 (one per halving block); for another box pass
#: ``encoder_channels=None`` (the variant's default) or one width per block.
KNOWN_POSE_CPU = dict(encoder="released", encoder_channels=[8, 16, 32, 64], encoder_hidden=128,
                      decoder="voxel", zdim=2, batch_size=16, lr=1e-3, decoder_lr=3e-2)


#: Ab initio CPU configuration (``--init-search``): the same small encoder and voxel basis
#: decoder. The poses come from the voxel search refined against the conformation-
#: dependent volume (the pose table, :mod:`cryofire_nb.hetero`), so the encoder mainly has
#: to learn z, which this model does within a few tens of thousands of images; its pose
#: heads are distilled towards the table at the same time. On the command line:
#: ``--init-search --encoder released --encoder-channels 8 16 32 64 --encoder-hidden 128
#: --decoder voxel --zdim 2 -b 16 --lr 1e-3 --decoder-lr 3e-2``.
ABINIT_CPU = dict(KNOWN_POSE_CPU, init_search=True)


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
