"""Small helpers added for the notebooks: per-image correlation, radius of gyration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryofire_nb.errors import InputError
from cryofire_nb.metrics import image_correlation
from cryofire_nb.simulate import radius_of_gyration


def test_image_correlation_is_pearson_per_image():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6, 5))
    b = rng.standard_normal((4, 6, 5))
    got = image_correlation(a, b)
    want = [np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # invariant to offset and positive scale, flips sign with a negative scale
    np.testing.assert_allclose(image_correlation(a, 3 * a + 2), 1.0, rtol=1e-12)
    np.testing.assert_allclose(image_correlation(torch.as_tensor(a), -a), -1.0, rtol=1e-12)
    assert image_correlation(a[0], b[0]).shape == (1,)
    with pytest.raises(InputError):
        image_correlation(a, b[:3])


def test_radius_of_gyration():
    # 6 atoms at +-r on each axis: every atom is r from the centre
    r = 2.5
    pts = np.concatenate([np.eye(3) * r, -np.eye(3) * r]) + np.array([10.0, -3.0, 7.0])
    assert radius_of_gyration(pts) == pytest.approx(r)
    both = radius_of_gyration(np.stack([pts, 2 * pts]))
    np.testing.assert_allclose(both, [r, 2 * r])
    with pytest.raises(ValueError):
        radius_of_gyration(np.zeros((4, 2)))
