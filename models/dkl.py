"""Deep kernel learning: image patch (structure) -> scalar spectral descriptor (property).

Why: in STEM/AFM-image -> spectrum campaigns (Roccapriore et al. 2022; Slautin et al. 2024) the
cheap measurement is an image of local structure and the expensive one is a spectrum there. A GP
over raw pixels is useless (1024-D, and two patches of the same texture shifted by one pixel
are far apart in pixel space). Deep kernel learning puts a small neural network in front of the
GP kernel: the network maps a patch to a few learned features, the GP (Matern 5/2 with ARD on
those features) models the property over them, and both are trained together by maximising the
GP marginal likelihood. The network learns which aspects of structure (stripe period, domain
orientation, ...) matter for the property, and the GP keeps calibrated uncertainty, which is
what lets an agent decide where a spectrum would be most informative.

The default extractor is a tiny CNN ending in global average pooling, so its features respond
to texture (period, orientation) and not to where in the patch a stripe happens to start; an
MLP on the flattened patch is available for comparison. Each patch is standardised by its own
mean and standard deviation first (contrast and brightness vary between images), and the
property is standardised with the training set's mean and standard deviation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import gpytorch
import numpy as np
import torch
from gpytorch.utils.grid import ScaleToBounds
from torch import nn

from ._threads import torch_scope

__all__ = ["DKLModel", "Extractor", "fit_dkl"]

Extractor = Literal["cnn", "mlp"]

# Noise variance floor (standardised property units). Learned features can make the training
# set look noise-free, and the GP then becomes overconfident off the training images.
_NOISE_FLOOR = 1e-3


def _feature_extractor(kind: Extractor, shape: tuple[int, int], feature_dim: int) -> nn.Module:
    """A small network mapping (n, h, w) patches to (n, feature_dim) features."""
    if kind == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, *shape)),
            nn.Conv2d(1, 8, kernel_size=5, stride=2, padding=2),
            nn.SiLU(),
            nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, feature_dim),
        )
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(shape[0] * shape[1], 64),
            nn.SiLU(),
            nn.Linear(64, 16),
            nn.SiLU(),
            nn.Linear(16, feature_dim),
        )
    raise ValueError(f"unknown extractor {kind!r}")


class _DeepKernelGP(gpytorch.models.ExactGP):
    """Exact GP whose inputs are the extractor's features, scaled into [-1, 1]."""

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
        extractor: nn.Module,
        feature_dim: int,
    ) -> None:
        super().__init__(train_x, train_y, likelihood)
        self.feature_extractor = extractor
        self.scale_to_bounds = ScaleToBounds(-1.0, 1.0)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=feature_dim)
        )

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        # The network runs in float32 (2x faster convolutions); the GP algebra in float64.
        z = self.scale_to_bounds(self.feature_extractor(x.float()).double())
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def _standardise_patches(images: np.ndarray) -> torch.Tensor:
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError("images must be shaped (n, h, w)")
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    scale = flat.std(axis=1, keepdims=True)
    return torch.as_tensor(flat / np.where(scale > 0, scale, 1.0))


@dataclass
class DKLModel:
    """A fitted deep-kernel GP; property in the caller's units.

    Attributes:
        gp, likelihood: the gpytorch model (in eval mode) and its Gaussian likelihood.
        image_shape: (h, w) of the patches it was trained on.
        y_mean, y_std: property standardisation.
        history: negative marginal log likelihood per training step.
    """

    gp: _DeepKernelGP
    likelihood: gpytorch.likelihoods.GaussianLikelihood
    image_shape: tuple[int, int]
    y_mean: float
    y_std: float
    history: list[float]

    def features(self, images: np.ndarray) -> np.ndarray:
        """The learned structure features (n, feature_dim), as the kernel sees them."""
        x = self._inputs(images)
        with torch_scope(threads=1), torch.no_grad():
            return self.gp.scale_to_bounds(self.gp.feature_extractor(x.float()).double()).numpy()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance of the (noise-free) property for ``images`` (n, h, w).

        As usual for deep kernel learning, the variance is optimistic off the training images
        (the network is fitted to the same data the GP conditions on): use it to rank where to
        measure, not as a calibrated error bar.
        """
        x = self._inputs(images)
        with torch_scope(threads=1), torch.no_grad():
            post = self.gp(x)
            mean, var = post.mean, post.variance.clamp_min(0.0)
        return mean.numpy() * self.y_std + self.y_mean, var.numpy() * self.y_std**2

    def condition(self, images: np.ndarray, y: np.ndarray) -> DKLModel:
        """The same network and kernel, conditioned on new training data without training.

        Why: an active-learning loop tells one new spectrum at a time; retraining network and
        kernel (``fit_dkl``) for each costs seconds, conditioning the exact GP on the grown
        training set costs milliseconds. The property keeps this model's standardisation.
        Returns a new model; this one is left as it was.
        """
        x = self._inputs(images)
        ya = np.asarray(y, dtype=np.float64).ravel()
        if len(ya) != len(x) or not np.all(np.isfinite(ya)):
            raise ValueError("need finite y (n,) for images (n, h, w)")
        gp = copy.deepcopy(self.gp)
        gp.set_train_data(x, torch.as_tensor((ya - self.y_mean) / self.y_std), strict=False)
        gp.eval()
        return replace(self, gp=gp, likelihood=gp.likelihood)

    def noise(self) -> float:
        """Observation-noise variance of the property, in the caller's units."""
        return float(self.likelihood.noise.detach()) * self.y_std**2

    def _inputs(self, images: np.ndarray) -> torch.Tensor:
        if np.asarray(images).shape[1:] != self.image_shape:
            raise ValueError(f"images must be (n, {self.image_shape[0]}, {self.image_shape[1]})")
        return _standardise_patches(images)


def fit_dkl(
    images: np.ndarray,
    y: np.ndarray,
    *,
    feature_dim: int = 2,
    steps: int = 80,
    seed: int = 0,
    extractor: Extractor = "cnn",
    lr: float = 0.01,
    threads: int | None = 1,
) -> DKLModel:
    """Train a deep-kernel GP from image patches ``images`` (n, h, w) to a property ``y`` (n,).

    Args:
        feature_dim: learned features the GP kernel works on (2 keeps the map inspectable).
        steps: Adam steps on the exact marginal likelihood (network and GP jointly).
        seed: seeds the network's initialisation.
        extractor: ``"cnn"`` (texture-aware, translation-invariant) or ``"mlp"``.
        lr: Adam learning rate (the GP hyperparameters use 10x).
        threads: torch intra-op threads during the fit.
    """
    x = _standardise_patches(images)
    ya = np.asarray(y, dtype=np.float64).ravel()
    if len(ya) != len(x) or len(ya) < 3:
        raise ValueError("need images (n, h, w) and y (n,) with n >= 3")
    if not (np.all(np.isfinite(ya)) and torch.isfinite(x).all()):
        raise ValueError("images and y must be finite")
    shape = (int(np.shape(images)[1]), int(np.shape(images)[2]))
    y_mean, y_std = float(ya.mean()), float(ya.std()) or 1.0
    ys = torch.as_tensor((ya - y_mean) / y_std)

    with torch_scope(seed=seed, threads=threads):
        net = _feature_extractor(extractor, shape, feature_dim)
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(_NOISE_FLOOR)
        ).double()
        model = _DeepKernelGP(x, ys, likelihood, net, feature_dim)
        for module in (model.mean_module, model.covar_module, model.scale_to_bounds):
            module.double()
        model.train()
        likelihood.train()
        optimiser = torch.optim.Adam(
            [
                {"params": model.feature_extractor.parameters(), "lr": lr},
                {"params": model.covar_module.parameters(), "lr": 10 * lr},
                {"params": model.mean_module.parameters(), "lr": 10 * lr},
                {"params": likelihood.parameters(), "lr": 10 * lr},
            ]
        )
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        history: list[float] = []
        for _ in range(steps):
            optimiser.zero_grad()
            loss = -mll(model(x), ys)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
        model.eval()
        likelihood.eval()
    return DKLModel(
        gp=model,
        likelihood=likelihood,
        image_shape=shape,
        y_mean=y_mean,
        y_std=y_std,
        history=history,
    )
