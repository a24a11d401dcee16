"""A small variational autoencoder per modality: signal -> low-dimensional descriptor.

Why: a Raman spectrum (~500-1000 channels), a PFM hysteresis loop (~64-128 points) or an image
patch is far too high-dimensional to be a GP task. Co-orchestration (Slautin et al. 2024)
compresses each modality's signals to 2-4 latent coordinates with a VAE; the posterior means
of those latents become the multi-task GP's targets. Because the VAE is unsupervised it needs no
physics model of the signal, and because its latent space is smooth and regularised by the KL
term, nearby latents mean similar signals, which is what a GP over library position assumes.

The network is a plain MLP on the flattened signal (1-D spectra/loops, or 2-D patches such as
32x32 flattened): small enough to train on a few hundred signals in seconds on two CPU cores,
so it can be refitted in the background as data arrive. Features are standardised with the
training set's per-channel mean and standard deviation (kept in the model), so the encoder sees
the same scale on every later call and channels with large raw intensity do not dominate.
Optionally (``per_signal=True``) each signal is first z-scored by itself, so that overall
intensity and offset (laser focus, detector gain) do not become a latent of their own.

The fitted model is a plain object holding numpy arrays and a torch module; ``state_dict()``
returns only numpy arrays and built-in types (cheap to pickle to and from Dask workers), and
``VAEModel.from_state`` rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._threads import torch_scope

__all__ = ["VAEModel", "fit_vae"]

_STD_FLOOR = 1e-6


def _per_signal(flat: np.ndarray) -> np.ndarray:
    """Z-score each row (signal) by its own mean and standard deviation."""
    centred = flat - flat.mean(axis=1, keepdims=True)
    scale = centred.std(axis=1, keepdims=True)
    return centred / np.where(scale > 0, scale, 1.0)


class _VAENet(nn.Module):
    """Gaussian encoder q(z|x) and Gaussian decoder p(x|z) (fixed unit variance)."""

    def __init__(self, n_features: int, latent_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        width = n_features
        for h in hidden:
            enc += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)
        dec: list[nn.Module] = []
        width = latent_dim
        for h in reversed(hidden):
            dec += [nn.Linear(width, h), nn.SiLU()]
            width = h
        dec.append(nn.Linear(width, n_features))
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


@dataclass
class VAEModel:
    """A fitted VAE for one modality, with the standardisation it was trained with.

    Attributes:
        signal_shape: shape of one signal, e.g. ``(512,)`` or ``(32, 32)``.
        latent_dim: number of latent coordinates (descriptor size).
        hidden: widths of the encoder's hidden layers (the decoder mirrors them).
        feature_mean, feature_std: per-channel standardisation from the training set.
        net: the torch encoder/decoder.
        history: the training loss (negative ELBO per signal) at each epoch.
        per_signal: whether each signal is z-scored by itself before the per-channel scaling.
    """

    signal_shape: tuple[int, ...]
    latent_dim: int
    hidden: tuple[int, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    net: _VAENet
    history: list[float]
    per_signal: bool = False

    def _standardise(self, signals: np.ndarray) -> torch.Tensor:
        x = np.asarray(signals, dtype=np.float64)
        if x.shape[1:] != self.signal_shape:
            raise ValueError(
                f"signals have shape {x.shape[1:]} per signal, model expects {self.signal_shape}"
            )
        flat = x.reshape(len(x), -1)
        if self.per_signal:
            flat = _per_signal(flat)
        return torch.as_tensor((flat - self.feature_mean) / self.feature_std, dtype=torch.float32)

    def encode(self, signals: np.ndarray) -> np.ndarray:
        """Posterior means of the latents, shape ``(n, latent_dim)``; deterministic."""
        x = self._standardise(signals)
        with torch_scope(threads=1), torch.no_grad():
            mu, _ = self.net.encode(x)
        return mu.numpy().astype(np.float64)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Signals for given latents, shape ``(n, *signal_shape)``.

        In the original units, or, for a ``per_signal`` model, in per-signal z-scores (the
        signal's own intensity and offset are not part of the latent).
        """
        z = torch.as_tensor(np.asarray(latents, dtype=np.float64), dtype=torch.float32)
        with torch_scope(threads=1), torch.no_grad():
            out = self.net.decoder(z.reshape(-1, self.latent_dim)).numpy().astype(np.float64)
        out = out * self.feature_std + self.feature_mean
        return out.reshape((-1, *self.signal_shape))

    def reconstruction_error(self, signals: np.ndarray) -> float:
        """Mean squared error of decode(encode(x)) in standardised units (1.0 ~ no skill).

        Measured in standardised units so that the figure is comparable across modalities
        and predicting the training mean for every channel scores about 1.
        """
        x = self._standardise(signals)
        with torch_scope(threads=1), torch.no_grad():
            mu, _ = self.net.encode(x)
            recon = self.net.decoder(mu)
        return float(torch.mean((recon - x) ** 2))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, as numpy arrays and built-in types."""
        return {
            "signal_shape": list(self.signal_shape),
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "feature_mean": self.feature_mean.copy(),
            "feature_std": self.feature_std.copy(),
            "weights": {k: v.detach().numpy().copy() for k, v in self.net.state_dict().items()},
            "history": list(self.history),
            "per_signal": self.per_signal,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VAEModel:
        """Rebuild a model from :meth:`state_dict` output."""
        shape = tuple(int(s) for s in state["signal_shape"])
        hidden = tuple(int(h) for h in state["hidden"])
        net = _VAENet(int(np.prod(shape)), int(state["latent_dim"]), hidden)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state["weights"].items()})
        net.eval()
        return cls(
            signal_shape=shape,
            latent_dim=int(state["latent_dim"]),
            hidden=hidden,
            feature_mean=np.asarray(state["feature_mean"], dtype=np.float64),
            feature_std=np.asarray(state["feature_std"], dtype=np.float64),
            net=net,
            history=list(state.get("history", [])),
            per_signal=bool(state.get("per_signal", False)),
        )


def fit_vae(
    signals: np.ndarray,
    latent_dim: int = 2,
    epochs: int = 100,
    seed: int = 0,
    *,
    per_signal: bool = False,
    hidden: tuple[int, ...] = (128, 32),
    batch_size: int = 64,
    lr: float = 3e-3,
    beta: float = 1.0,
    threads: int | None = 1,
) -> VAEModel:
    """Train a VAE on ``signals`` of shape ``(n, *signal_shape)`` and return the fitted model.

    Args:
        signals: n signals; each is flattened (a 32x32 patch becomes 1024 features).
        latent_dim: descriptor size, 2-4 in co-orchestration (more latents, more GP tasks).
        epochs: passes over the data (mini-batches of ``batch_size``, Adam).
        seed: seeds weight initialisation, shuffling and the reparameterisation noise.
        per_signal: first z-score each signal by its own mean and standard deviation, so that
            overall intensity and offset (laser focus, gain drift) do not become a latent; the
            descriptor then reflects signal shape only.
        hidden: encoder hidden widths; the decoder mirrors them.
        beta: KL weight; 1 is the standard ELBO, smaller trades latent regularity for fidelity.
        threads: torch intra-op threads during the fit (restored afterwards); see _threads.

    The loss is the negative ELBO with a unit-variance Gaussian likelihood on standardised
    features, per signal: 0.5 * squared error summed over channels + beta * KL(q(z|x) || N(0, I)).
    """
    x = np.asarray(signals, dtype=np.float64)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError("signals must be shaped (n, *signal_shape) with n >= 2")
    if not np.all(np.isfinite(x)):
        raise ValueError("signals contain NaN or inf")
    if not 1 <= latent_dim <= 16:
        raise ValueError("latent_dim must be between 1 and 16")
    shape = tuple(int(s) for s in x.shape[1:])
    flat = _per_signal(x.reshape(len(x), -1)) if per_signal else x.reshape(len(x), -1)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), _STD_FLOOR * max(1.0, float(np.abs(flat).max())))
    data = torch.as_tensor((flat - mean) / std, dtype=torch.float32)

    with torch_scope(seed=seed, threads=threads):
        net = _VAENet(flat.shape[1], latent_dim, tuple(hidden))
        optimiser = torch.optim.Adam(net.parameters(), lr=lr)
        n = len(data)
        history: list[float] = []
        net.train()
        for _ in range(epochs):
            order = torch.randperm(n)
            total = 0.0
            for start in range(0, n, batch_size):
                batch = data[order[start : start + batch_size]]
                recon, mu, logvar = net(batch)
                nll = 0.5 * ((recon - batch) ** 2).sum(dim=1)
                kl = 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar).sum(dim=1)
                loss = (nll + beta * kl).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / n)
        net.eval()

    return VAEModel(
        signal_shape=shape,
        latent_dim=latent_dim,
        hidden=tuple(hidden),
        feature_mean=mean,
        feature_std=std,
        net=net,
        history=history,
        per_signal=per_signal,
    )
