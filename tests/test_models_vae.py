"""VAE descriptors: training lowers reconstruction error, latents separate phases, state ships."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from coorch.models.vae import VAEModel, fit_vae


def _two_phase_spectra(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic Raman-like spectra: phase 0 has a mode near channel 180, phase 1 near 330."""
    rng = np.random.default_rng(seed)
    channels = np.arange(512)
    phase = rng.integers(0, 2, n)
    centre = np.where(phase == 0, 180.0, 330.0) + rng.normal(0, 5, n)
    amplitude = rng.uniform(0.8, 1.2, n)
    mode = amplitude[:, None] * np.exp(-0.5 * ((channels - centre[:, None]) / 15.0) ** 2)
    shared = 0.3 * np.exp(-0.5 * ((channels - 420.0) / 30.0) ** 2)
    return mode + shared + rng.normal(0, 0.05, (n, 512)), phase


@pytest.fixture(scope="module")
def spectra() -> tuple[np.ndarray, np.ndarray]:
    return _two_phase_spectra(200, seed=0)


@pytest.fixture(scope="module")
def trained(spectra: tuple[np.ndarray, np.ndarray]) -> VAEModel:
    return fit_vae(spectra[0], latent_dim=2, epochs=100, seed=0)


def test_reconstruction_error_falls_with_training(spectra, trained) -> None:
    x, _ = spectra
    untrained = fit_vae(x, latent_dim=2, epochs=1, seed=0)
    assert trained.history[-1] < 0.8 * trained.history[0]
    assert trained.reconstruction_error(x) < 0.8 * untrained.reconstruction_error(x)
    held_out, _ = _two_phase_spectra(50, seed=1)
    assert trained.reconstruction_error(held_out) < untrained.reconstruction_error(held_out)


def test_latents_separate_two_phases(trained) -> None:
    x, phase = _two_phase_spectra(100, seed=2)  # unseen signals
    z = trained.encode(x)
    assert z.shape == (100, 2)
    # Nearest class centroid in latent space (centroids from half, scored on the other half).
    fit, score = slice(0, 50), slice(50, 100)
    centroids = np.stack([z[fit][phase[fit] == k].mean(axis=0) for k in (0, 1)])
    dist = np.linalg.norm(z[score][:, None, :] - centroids[None], axis=2)
    accuracy = np.mean(dist.argmin(axis=1) == phase[score])
    assert accuracy >= 0.95
    # Between-phase distance well above the within-phase spread.
    spread = max(z[phase == k].std(axis=0).max() for k in (0, 1))
    assert np.linalg.norm(centroids[0] - centroids[1]) > 2 * spread


def test_encode_is_deterministic_and_state_round_trips(spectra, trained) -> None:
    x, _ = spectra
    z = trained.encode(x[:20])
    np.testing.assert_array_equal(z, trained.encode(x[:20]))
    state = pickle.loads(pickle.dumps(trained.state_dict()))
    assert all(not hasattr(v, "requires_grad") for v in state["weights"].values())
    rebuilt = VAEModel.from_state(state)
    np.testing.assert_allclose(rebuilt.encode(x[:20]), z, rtol=0, atol=1e-6)
    assert rebuilt.reconstruction_error(x) == pytest.approx(trained.reconstruction_error(x))
    np.testing.assert_allclose(pickle.loads(pickle.dumps(trained)).encode(x[:5]), z[:5], atol=1e-5)


def test_same_seed_same_model_and_rng_untouched(spectra) -> None:
    import torch

    x = spectra[0][:64]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = fit_vae(x, latent_dim=3, epochs=5, seed=7)
    after = torch.rand(1)
    b = fit_vae(x, latent_dim=3, epochs=5, seed=7)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert a.encode(x).shape == (64, 3)
    assert torch.equal(before, after)  # the caller's torch RNG stream is not consumed


def test_image_patches_and_per_signal_normalisation() -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:32, 0:32]
    vertical = rng.integers(0, 2, 80)
    phase = rng.uniform(0, 2 * np.pi, 80)
    coord = np.where(vertical[:, None, None] == 1, xx[None], yy[None])
    patches = np.sin(2 * np.pi * coord / 8.0 + phase[:, None, None])
    patches = rng.uniform(0.5, 5.0, 80)[:, None, None] * patches + rng.normal(0, 0.2, patches.shape)
    vae = fit_vae(patches, latent_dim=2, epochs=60, seed=0, per_signal=True)
    assert vae.encode(patches).shape == (80, 2)
    assert vae.decode(vae.encode(patches[:3])).shape == (3, 32, 32)
    assert vae.reconstruction_error(patches) < 1.0
    with pytest.raises(ValueError):
        vae.encode(patches[:, :16, :16])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_vae(np.zeros(10))
    with pytest.raises(ValueError):
        fit_vae(np.full((5, 8), np.nan))
