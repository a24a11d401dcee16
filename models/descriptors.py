"""Physics descriptors: one signal in, a few numbers (GP tasks) out.

The multi-task GP needs low-dimensional targets. A VAE learns them (``coorch.models.vae``); these
physics fits give them without training, so they work from the first measurement and mean
something to a materials scientist: the PFM loop's opening (switchable polarisation times
coercive field), the Raman spectrum's centre of mass (mode shifts across the phase boundary),
the dopant's atomic fraction, the STEM image's superstructure power, an EELS edge's
near-edge peak over its step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter1d, median_filter, minimum_filter1d

from coorch.records import Signal

Descriptor = Callable[[Signal], np.ndarray]
Window = tuple[float, float]


def loop_opening(sig: Signal) -> np.ndarray:
    """Area between the two branches of a hysteresis loop (pm/V x V): zero when non-switching."""
    return loop_openings(sig, sig.array()[None])


def loop_openings(template: Signal, loops: np.ndarray) -> np.ndarray:
    """:func:`loop_opening` of many loops at once, ``loops`` (n, branch, bias) shaped like
    ``template``'s values (the ground truth averages thousands of noisy draws)."""
    bias = np.asarray(template.coords["bias"], float)
    branch = list(template.coords.get("branch", ["forward", "reverse"]))
    diff = loops[:, branch.index("reverse")] - loops[:, branch.index("forward")]
    diff = median_filter(diff, size=(1, 3), mode="nearest")
    return ((diff[:, 1:] + diff[:, :-1]) * np.diff(bias)).sum(-1) / 2.0


def spectral_centroid(sig: Signal, axis: str | None = None) -> np.ndarray:
    """Intensity-weighted mean position after removing spikes and a rolling-minimum baseline."""
    return spectral_centroids(sig, sig.array()[None], axis)


def spectral_centroids(template: Signal, y: np.ndarray, axis: str | None = None) -> np.ndarray:
    """:func:`spectral_centroid` of many spectra at once, ``y`` (n, N) on ``template``'s axis."""
    x = np.asarray(template.coords[axis or template.dims[0]], float)
    y = median_filter(np.asarray(y, float), size=(1, 5), mode="nearest")  # cosmic-ray spikes
    n = y.shape[-1]
    base = gaussian_filter1d(minimum_filter1d(y, size=max(5, n // 5), axis=-1), n / 20, axis=-1)
    w = np.clip(y - base, 0, None)
    return (w * x).sum(-1) / np.maximum(w.sum(-1), 1e-12)


def dopant_fraction(sig: Signal, dopants: tuple[str, ...] = ("Sm", "Sc", "B")) -> np.ndarray:
    """At.% of the first dopant element the spectrometer reports."""
    elements = list(sig.coords["element"])
    for el in dopants:
        if el in elements:
            return np.array([sig.array()[elements.index(el)]])
    raise ValueError(f"none of {dopants} among the measured elements {elements}")


def superstructure_power(sig: Signal, cutoff: float = 0.2) -> np.ndarray:
    """Fraction of an image's (non-DC) power below ``cutoff`` cycles/pixel: the long-period
    superstructure and domain contrast that appear away from the plain perovskite lattice."""
    img = sig.array()
    power = np.abs(np.fft.fft2(img - img.mean())) ** 2
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    r = np.sqrt(fx**2 + fy**2)
    return np.array([float(power[(r > 0) & (r < cutoff)].sum() / max(power.sum(), 1e-12))])


def roughness(sig: Signal) -> np.ndarray:
    """RMS height after removing a best-fit plane (nm)."""
    z = sig.array()
    yy, xx = np.mgrid[: z.shape[0], : z.shape[1]]
    a = np.column_stack([np.ones(z.size), xx.ravel(), yy.ravel()])
    resid = z.ravel() - a @ np.linalg.lstsq(a, z.ravel(), rcond=None)[0]
    return np.array([float(np.sqrt((resid**2).mean()))])


def latent_component(sig: Signal, component: int = 1) -> np.ndarray:
    """A pre-computed latent vector (replayed data): pick the published run's component."""
    return np.array([sig.array().reshape(-1)[component]])


def edge_peak_ratio(
    sig: Signal,
    pre: Window = (490.0, 528.0),
    peak: Window = (530.0, 537.0),
    post: Window = (545.0, 570.0),
    axis: str | None = None,
) -> np.ndarray:
    """Fine-structure peak over edge step of a core-loss edge, background removed (1 value).

    Why: the spectral centroid of a whole EELS window is dominated by the power-law background
    and barely moves with the physics; the strength of a near-edge peak relative to its edge
    step is what changes (the O K pre-peak follows the O 2p - Fe 3d hybridisation, stronger in
    polar BiFeO3). A power law ``A E^-r`` is fitted in ``pre`` (log-log least squares, as in
    standard EELS background removal), extrapolated and subtracted; the result is the mean net
    intensity in ``peak`` over the mean net intensity in ``post``. Windows are in the units of
    the signal's axis (``axis``, default its first dim).
    """
    y = np.asarray(sig.array(), float).ravel()
    e = np.asarray(sig.coords[axis or sig.dims[0]], float)
    windows = [(e >= lo) & (e <= hi) for lo, hi in (pre, peak, post)]
    if any(w.sum() < 2 for w in windows):
        raise ValueError(
            f"each window needs two samples of {axis or sig.dims[0]} in [{e.min()}, {e.max()}]"
        )
    m = windows[0] & (e > 0)
    slope, intercept = np.polyfit(np.log(e[m]), np.log(np.clip(y[m], 1e-12, None)), 1)
    net = y - np.exp(intercept + slope * np.log(np.clip(e, 1e-12, None)))
    step = net[windows[2]].mean()
    return np.array([float(net[windows[1]].mean() / (step if abs(step) > 1e-12 else 1e-12))])


#: Descriptors of many signals at once, ``fn(template, values (n, *shape))``, where one
#: exists (the costly ones; :func:`coorch.tasks.report.ground_truth` averages noisy draws).
BATCHED: dict[Descriptor, Callable[[Signal, np.ndarray], np.ndarray]] = {
    loop_opening: loop_openings,
    spectral_centroid: spectral_centroids,
}

PHYSICS: dict[str, Descriptor] = {
    "pfm_loop": loop_opening,
    "beps_polarization": loop_opening,
    "raman": spectral_centroid,
    "eels": spectral_centroid,
    "wds": dopant_fraction,
    "stem_haadf": superstructure_power,
    "afm_topo": roughness,
}


def describe(modality: str, sig: Signal) -> np.ndarray:
    """The physics descriptor of one ``modality`` signal (a latent vector is passed through)."""
    if sig.dims == ["latent"]:
        return latent_component(sig)
    try:
        fn = PHYSICS[modality]
    except KeyError:
        raise KeyError(f"no physics descriptor for {modality!r}; known: {list(PHYSICS)}") from None
    return fn(sig)
