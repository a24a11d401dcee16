"""Deep kernel learning: a property that depends on image texture is learned from patches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from coorch.models.dkl import DKLModel, fit_dkl


def _stripes(n: int, rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Stripe patches of random period, orientation, phase and contrast, with pixel noise.

    The property is log(period): it depends on the texture only, not on where the stripes
    start, which way they run or how bright they are.
    """
    period = rng.uniform(4.0, 12.0, n)
    theta = rng.uniform(0.0, np.pi, n)[:, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, n)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size]
    along = xx[None] * np.cos(theta) + yy[None] * np.sin(theta)
    images = np.sin(2 * np.pi * along / period[:, None, None] + phase)
    images = rng.uniform(0.5, 2.0, n)[:, None, None] * images + rng.normal(0, 0.3, images.shape)
    return images, np.log(period)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images, prop = _stripes(120, rng)
    return images[:80], prop[:80], images[80:], prop[80:]


@pytest.fixture(scope="module")
def model(data) -> DKLModel:
    train_x, train_y, _, _ = data
    return fit_dkl(train_x, train_y, feature_dim=2, seed=0)


def test_learns_texture_property_on_held_out_images(data, model) -> None:
    train_x, train_y, test_x, test_y = data
    mean, var = model.predict(test_x)
    assert mean.shape == var.shape == (40,)
    assert np.all(var >= 0)
    rmse = np.sqrt(np.mean((mean - test_y) ** 2))
    rmse_mean_only = np.sqrt(np.mean((train_y.mean() - test_y) ** 2))
    assert rmse < 0.5 * rmse_mean_only
    assert model.history[-1] < model.history[0]


def test_features_and_pickling(data, model) -> None:
    _, _, test_x, _ = data
    features = model.features(test_x)
    assert features.shape == (40, 2)
    assert np.all(np.isfinite(features))
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(clone.predict(test_x[:5])[0], model.predict(test_x[:5])[0])
    with pytest.raises(ValueError):
        model.predict(test_x[:, :16, :16])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_dkl(np.zeros((4, 8)), np.zeros(4))
    with pytest.raises(ValueError):
        fit_dkl(np.zeros((4, 8, 8)), np.zeros(3))
