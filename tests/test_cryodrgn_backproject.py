"""``cryofire-nb backproject`` against cryoDRGN 4.3.1's ``backproject_voxel`` on the same
files (``bench/compare_backproject_cryodrgn.py`` at a small size). Skipped cleanly when
``.venv-cryodrgn`` is absent (``make cryodrgn-venv``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("compare_backproject_cryodrgn",
                                                  REPO / "bench" / "compare_backproject_cryodrgn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.cryodrgn
def test_backproject_matches_cryodrgn(cryodrgn_python, tmp_path):
    bench = _bench_module()
    bench.CRYODRGN = Path(cryodrgn_python).parent / "cryodrgn"
    truth = bench.make_dataset(tmp_path, d=32, n=1000, noise_rel=0.5, seed=3)
    ours, _ = bench.run_ours(tmp_path)
    theirs, _ = bench.run_cryodrgn(tmp_path, bench.CRYODRGN)
    from cryofire_nb.reconstruct import soft_sphere_mask

    mask = soft_sphere_mask(32, radius_px=13, edge_px=2).double()
    same_frame = bench.corr(ours, theirs, mask)
    assert same_frame >= 0.97, same_frame
    # Same frame: no residual shift, and the other hand / swapped axes are clearly worse.
    offset = bench.best_offset(ours, theirs)
    assert max(abs(o) for o in offset) < 0.2, offset
    assert bench.corr(ours, theirs.flip(0), mask) < same_frame - 0.1
    assert bench.corr(ours, theirs.transpose(1, 2), mask) < same_frame - 0.1
    # Both recover the truth.
    assert bench.corr(ours, truth, mask) >= 0.95
    assert bench.corr(theirs, truth, mask) >= 0.95


def test_bench_dataset_is_consistent(tmp_path):
    """The bench's analytic dataset reconstructs with our own code (no cryoDRGN needed),
    so a cryoDRGN disagreement cannot come from a broken dataset."""
    bench = _bench_module()
    truth = bench.make_dataset(tmp_path, d=24, n=400, noise_rel=0.0, seed=1)
    ours, _ = bench.run_ours(tmp_path)
    assert bench.corr(ours, truth) > 0.95
    assert max(abs(o) for o in bench.best_offset(truth, ours)) < 0.1
