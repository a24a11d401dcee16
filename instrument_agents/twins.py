"""Four digital twins (AFM/PFM, micro-Raman, WDS, STEM) over a virtual library.

Each twin is a :class:`~coorch.instrument_agents.twin_base.TwinDriver` whose modalities render
the library's ground truth into the signal a real instrument of that kind returns (arrays with
dims, coords and units) and add that instrument's characteristic noise. ``make_twin`` is the one
entry point the flows, the CLI and the tests use.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy.ndimage import gaussian_filter

from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.twin_base import Mode, TwinDriver

N_BIAS = 64
N_RAMAN = 512
N_IMAGE = 32
N_EELS = 256


def _texture_rng(seed: int, salt: str, x: np.ndarray, y: np.ndarray) -> np.random.Generator:
    """A generator fixed by the position: the same spot always shows the same grains/domains."""
    ix, iy = int(round((float(x) + 1000.0) * 1000)), int(round((float(y) + 1000.0) * 1000))
    return np.random.default_rng([seed, zlib.crc32(salt.encode()), ix, iy])


def _scalar(a: np.ndarray) -> float:
    return float(np.asarray(a).reshape(-1)[0])


class AFMTwin(TwinDriver):
    """Band-excitation PFM: hysteresis loops (``pfm_loop``) and topography (``afm_topo``)."""

    kind = "afm"
    move_cost_s_per_mm = 2.0
    sample_load_cost_s = 120.0
    latch_message = "tip broken"
    topo_pixel_nm = 31.25

    def default_frame(self) -> AffineFrame:
        return AffineFrame.from_rotation(0.8, (20.0, 15.0))

    def _modes(self) -> list[Mode]:
        vmax = self.library.bias_max_v
        bias = np.linspace(-vmax, vmax, N_BIAS)
        px = np.arange(N_IMAGE) * self.topo_pixel_nm
        return [
            Mode(
                "pfm_loop",
                "piezoresponse",
                ["branch", "bias"],
                {"branch": ["forward", "reverse"], "bias": bias.tolist()},
                "pm/V",
                {"bias": "V"},
                30.0,
                lambda x, y: self.library.pfm_loop(bias, x, y),
                self._loop_noise,
                long_name="band-excitation piezoresponse hysteresis loop",
            ),
            Mode(
                "afm_topo",
                "height",
                ["y", "x"],
                {"y": px.tolist(), "x": px.tolist()},
                "nm",
                {"y": "nm", "x": "nm"},
                240.0,
                self._topo,
                self._topo_noise,
                long_name="AFM topography",
            ),
        ]

    @staticmethod
    def _loop_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        gain = 1.0 + rng.normal(0.0, 0.03)  # tip-sample contact varies loop to loop
        return gain * clean + rng.normal(0.0, 1.5, clean.shape) * (1 + 0.02 * np.abs(clean))

    def _topo(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lib = self.library
        f = _scalar(lib.polar_fraction(x, y))
        rng = _texture_rng(self.seed, "topo", x, y)
        grain_px = 1.5 + 2.0 * f  # the ferroelectric phase grows larger grains
        tex = gaussian_filter(rng.normal(size=(N_IMAGE, N_IMAGE)), grain_px, mode="wrap")
        tex = tex / (tex.std() + 1e-12)
        rough_nm = 0.8 + 1.5 * (1.0 - f)
        i = np.arange(N_IMAGE)
        tilt = 0.01 * i[None, :] + 0.005 * i[:, None]
        return rough_nm * tex + tilt

    @staticmethod
    def _topo_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = rng.normal(0.0, 0.15, (clean.shape[0], 1))  # line-to-line offsets of a raster
        return clean + rows + rng.normal(0.0, 0.1, clean.shape)


class RamanTwin(TwinDriver):
    """Micro-Raman: Lorentzian modes on a fluorescence background, shot and read noise."""

    kind = "raman"
    move_cost_s_per_mm = 0.5
    sample_load_cost_s = 60.0
    latch_message = "laser interlock open"
    counts_scale = 3000.0

    def default_frame(self) -> AffineFrame:
        return AffineFrame.from_rotation(-1.5, (5.0, 30.0))

    def _modes(self) -> list[Mode]:
        wn = np.linspace(100.0, 800.0, N_RAMAN)
        return [
            Mode(
                "raman",
                "intensity",
                ["wavenumber"],
                {"wavenumber": wn.tolist()},
                "counts",
                {"wavenumber": "cm^-1"},
                20.0,
                lambda x, y: self._spectrum(wn, x, y),
                self._noise,
                long_name="Raman scattered intensity",
            )
        ]

    def _spectrum(self, wn: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lib = self.library
        centres, widths, amps = (np.asarray(a, float).reshape(-1) for a in lib.raman_modes(x, y))
        half = widths[:, None] / 2.0
        peaks = (amps[:, None] / (1.0 + ((wn[None, :] - centres[:, None]) / half) ** 2)).sum(0)
        scale = self.counts_scale * _scalar(lib.thickness_nm(x, y)) / 100.0
        t = (wn - wn[0]) / (wn[-1] - wn[0])
        background = 1000.0 * _scalar(lib.fluorescence(x, y)) * (0.3 + 0.7 * t**1.5)
        return scale * peaks + background + 50.0

    @staticmethod
    def _noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = rng.poisson(np.clip(clean, 0, None)).astype(float) + rng.normal(0.0, 4.0, clean.shape)
        if rng.random() < 0.03:  # a cosmic-ray spike now and then, as on every CCD
            out[rng.integers(len(out))] += rng.uniform(500, 2000)
        return out


class WDSTwin(TwinDriver):
    """Electron-microprobe WDS: element concentrations with Poisson counting statistics."""

    kind = "wds"
    move_cost_s_per_mm = 1.0
    sample_load_cost_s = 900.0
    latch_message = "filament burnt out"
    counts_per_at_pct = 150.0

    def default_frame(self) -> AffineFrame:
        return AffineFrame.from_rotation(0.3, (40.0, 40.0))

    def _modes(self) -> list[Mode]:
        elements = list(self.library.elements)
        return [
            Mode(
                "wds",
                "concentration",
                ["element"],
                {"element": elements},
                "at.%",
                {},
                60.0,
                self._conc,
                self._noise,
                long_name="element concentration",
            )
        ]

    def _conc(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        at = self.library.atomic_percent(x, y)
        return np.array([_scalar(at[e]) for e in self.library.elements])

    def _noise(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        light = {"O", "N", "B"}  # light elements give few X-ray counts
        k = np.array([0.3 if e in light else 1.0 for e in self.library.elements])
        counts = rng.poisson(clean * k * self.counts_per_at_pct)
        raw = counts / (k * self.counts_per_at_pct)
        return 100.0 * raw / max(raw.sum(), 1e-12)  # totals are normalised, as usual in WDS


class STEMTwin(TwinDriver):
    """STEM: HAADF lattice patches whose domain texture follows the phase, and EELS spectra."""

    kind = "stem"
    move_cost_s_per_mm = 5.0
    sample_load_cost_s = 1800.0
    latch_message = "beam lost"
    pixel_nm = 0.125

    def default_frame(self) -> AffineFrame:
        return AffineFrame.from_rotation(3.0, (-5.0, -1.0))

    def _modes(self) -> list[Mode]:
        px = np.arange(N_IMAGE) * self.pixel_nm
        e0, e1 = self.library.eels_range_ev
        energy = np.linspace(e0, e1, N_EELS)
        return [
            Mode(
                "stem_haadf",
                "haadf",
                ["y", "x"],
                {"y": px.tolist(), "x": px.tolist()},
                "counts",
                {"y": "nm", "x": "nm"},
                5.0,
                lambda x, y: self._haadf(px, x, y),
                self._haadf_noise,
                long_name="HAADF-STEM intensity",
            ),
            Mode(
                "eels",
                "eels",
                ["energy_loss"],
                {"energy_loss": energy.tolist()},
                "counts",
                {"energy_loss": "eV"},
                8.0,
                lambda x, y: self._eels(energy, x, y),
                self._eels_noise,
                long_name="core-loss EELS",
            ),
        ]

    def _haadf(self, px: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lib = self.library
        f = _scalar(lib.polar_fraction(x, y))
        a = _scalar(lib.lattice_nm(x, y))
        z_heavy = _scalar(lib.mean_z(x, y))
        rng = _texture_rng(self.seed, "haadf", x, y)
        fov = px[-1] + self.pixel_nm
        n = int(np.ceil(fov / a)) + 2
        i, j = np.meshgrid(np.arange(-1, n), np.arange(-1, n))
        origin = rng.uniform(0, a, 2)
        ax, ay = i * a + origin[0], j * a + origin[1]
        # Polar phase: two domains split by a wall, B-site columns displaced in opposite senses.
        theta, c0 = rng.uniform(0, np.pi), rng.uniform(0.3, 0.7) * fov
        side = np.sign(
            (ax - fov / 2) * np.sin(theta) - (ay - fov / 2) * np.cos(theta) + 1e-9 + c0 - fov / 2
        )
        disp = 0.045 * f * side
        # Non-polar phase: antipolar A-site shifts doubling the cell along x, with a weak
        # intensity superstructure from octahedral tilts.
        alt = (-1.0) ** i
        a_x = ax + 0.035 * (1.0 - f) * alt
        a_int = (z_heavy / 83.0) ** 1.7 * (1.0 + 0.08 * (1.0 - f) * alt)
        b_x, b_y = ax + a / 2 + disp, ay + a / 2 + disp
        b_int = np.full_like(b_x, 0.2)
        cx = np.concatenate([a_x.ravel(), b_x.ravel()])
        cy = np.concatenate([ay.ravel(), b_y.ravel()])
        amp = np.concatenate([a_int.ravel(), b_int.ravel()])
        gx = np.exp(-0.5 * ((px[None, :] - cx[:, None]) / 0.08) ** 2)  # (columns, x)
        gy = np.exp(-0.5 * ((px[None, :] - cy[:, None]) / 0.08) ** 2)  # (columns, y)
        image = np.einsum("k,ky,kx->yx", amp, gy, gx)
        # Domain contrast: the two polar domains channel differently (brighter/darker) and the
        # wall between them is a dark band; both vanish in the non-polar phase.
        py, pxx = np.meshgrid(px, px, indexing="ij")
        dist = (pxx - fov / 2) * np.sin(theta) - (py - fov / 2) * np.cos(theta) + c0 - fov / 2
        wall = np.exp(-0.5 * (dist / 0.25) ** 2)
        image *= (1.0 + 0.1 * f * np.tanh(dist / 0.1)) * (1.0 - 0.2 * f * wall)
        return 400.0 * image + 20.0

    @staticmethod
    def _haadf_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        jitter = rng.normal(0.0, 0.3, (clean.shape[0], 1))  # scan-line jitter, in pixels
        rows = np.array(
            [
                np.interp(
                    np.arange(clean.shape[1]) + jitter[r, 0], np.arange(clean.shape[1]), clean[r]
                )
                for r in range(clean.shape[0])
            ]
        )
        return rng.poisson(np.clip(rows, 0, None)).astype(float)

    def _eels(self, energy: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        spectrum = 2.0e4 * (energy / energy[0]) ** -3.0
        for onset, jump, white in self.library.eels_edges(x, y):
            j, w = _scalar(jump), _scalar(white)
            step = 0.5 + np.arctan((energy - onset) / 1.0) / np.pi
            tail = np.clip(energy / onset, 1.0, None) ** -2.0
            spectrum = spectrum + 2.0e3 * j * step * tail
            spectrum = spectrum + 2.0e3 * j * w * np.exp(-0.5 * ((energy - onset - 2.0) / 1.5) ** 2)
        return spectrum

    @staticmethod
    def _eels_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.poisson(np.clip(clean, 0, None)).astype(float) + rng.normal(0, 3.0, clean.shape)


TWINS: dict[str, type[TwinDriver]] = {
    "afm": AFMTwin,
    "raman": RamanTwin,
    "wds": WDSTwin,
    "stem": STEMTwin,
}


def make_twin(
    instrument: str,
    library: str = "smbfo",
    *,
    seed: int = 0,
    time_scale: float = 0.0,
    fault_rate: float = 0.0,
    instrument_id: str | None = None,
    **kw: object,
) -> TwinDriver:
    """A digital twin of ``instrument`` (afm, raman, wds, stem) over virtual ``library``.

    Extra keywords (``frame``, ``hang_s``, ``fault_weights``) go to :class:`TwinDriver`.
    """
    try:
        cls = TWINS[instrument]
    except KeyError:
        raise KeyError(f"unknown instrument {instrument!r}; known: {list(TWINS)}") from None
    return cls(
        library,
        seed=seed,
        time_scale=time_scale,
        fault_rate=fault_rate,
        instrument_id=instrument_id,
        **kw,
    )  # type: ignore[arg-type]
