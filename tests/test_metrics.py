import numpy as np
import pytest
import torch
from scipy import linalg

from hw4 import metrics as M


def gaussian(n, d, shift=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3 + torch.eye(d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ a) * scale + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    x = gaussian(5000, 8)
    ref = M.stats_from_features(x)
    assert M.frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    fids = [M.frechet_distance(M.stats_from_features(x + s * torch.randn(x.shape, generator=g,
                                                                            dtype=x.dtype)), ref)
            for s in (0.1, 0.5, 1.0)]
    assert 0 < fids[0] < fids[1] < fids[2]


def test_fid_matches_the_formula_on_small_gaussians():
    """Closed form for commuting (diagonal) covariances: ||dmu||^2 + sum (s1 - s2)^2 in std units."""
    a = M.FeatureStats(np.array([0.0, 1.0, 2.0]), np.diag([1.0, 4.0, 9.0]), 100)
    b = M.FeatureStats(np.array([1.0, 1.0, 0.0]), np.diag([4.0, 1.0, 1.0]), 100)
    expected = (1 + 0 + 4) + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # general covariances: against a direct evaluation of the definition
    x, y = gaussian(2000, 5, seed=2), gaussian(2000, 5, shift=0.5, scale=1.3, seed=3)
    sa, sb = M.stats_from_features(x), M.stats_from_features(y)
    direct = (np.sum((sa.mu - sb.mu) ** 2) + np.trace(sa.sigma + sb.sigma)
              - 2 * np.trace(linalg.sqrtm(linalg.sqrtm(sa.sigma) @ sb.sigma @ linalg.sqrtm(sa.sigma)).real))
    assert M.frechet_distance(sa, sb) == pytest.approx(direct, rel=1e-6)


def test_stats_round_trip_and_class_histogram():
    s = M.stats_from_features(gaussian(100, 4))
    s2 = M.FeatureStats.from_dict(s.to_dict())
    assert np.allclose(s.mu, s2.mu) and np.allclose(s.sigma, s2.sigma) and s2.n == 100
    logits = torch.eye(10).repeat(5, 1)
    h = M.class_histogram(logits)
    assert h["entropy"] == pytest.approx(np.log(10))
    assert M.class_histogram(torch.eye(10)[[3] * 20])["entropy"] == 0.0
