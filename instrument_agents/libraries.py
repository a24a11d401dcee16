"""Virtual combinatorial libraries: composition and properties as known functions of position.

The digital twins render their signals from these functions, and benchmarks score a campaign
against them, so a twin campaign can be graded against the truth (which a real library never
gives us). Everything is vectorised over numpy arrays of library coordinates in mm.

Three libraries:

* ``smbfo``: Bi(1-s)Sm(s)FeO3, Sm fraction ``s`` rising linearly 0 -> 0.20 along x in [0, 10] mm
  (y in [0, 2] mm only changes the film thickness slightly). A morphotropic phase boundary at
  ``s = 0.135`` separates a rhombohedral ferroelectric (R3c) from an orthorhombic (Pnma-like,
  non-polar) phase; the piezoresponse peaks at the boundary and the coercive voltage falls with Sm.
* ``alscbn``: (Al(a)Sc(b)B(c))N from three sputter guns over a 10 x 10 mm chip. Wurtzite (Al,Sc,B)N
  only becomes switchable (ferroelectric below breakdown) once Sc/B have flattened the lattice
  enough, and loses its polar wurtzite structure past the phase-stability limit, so
  ferroelectricity appears in a band between two boundaries.
* ``smbfo-lgd``: the smbfo spread whose PFM loops come from the Landau-Ginzburg-Devonshire
  simulator (:mod:`coorch.lgd`) at hidden parameters, times a clamping factor along y that the
  simulator lacks: the ground truth of a co-navigation (theory in the loop) campaign.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from coorch import lgd

ArrayLike = Any  # float or numpy array; every function broadcasts


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


def _scalar(a: ArrayLike) -> float:
    return float(np.asarray(a).reshape(-1)[0])


class VirtualLibrary(ABC):
    """A library with known ground truth. Subclasses define the physics; this defines the shape.

    ``extent`` is ``((x0, x1), (y0, y1))`` in mm of the library frame. Positions outside the
    extent are clipped to it (the film stops, the composition does not extrapolate).
    """

    name: str
    extent: tuple[tuple[float, float], tuple[float, float]]
    elements: tuple[str, ...]
    phase_names: tuple[str, ...]
    bias_max_v: float  # PFM sweep amplitude that switches this film
    eels_range_ev: tuple[float, float]

    def clip(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        (x0, x1), (y0, y1) = self.extent
        return np.clip(np.asarray(x, float), x0, x1), np.clip(np.asarray(y, float), y0, y1)

    @abstractmethod
    def composition(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        """Fractions on the substituted site (they sum to 1), e.g. ``{"Bi": .9, "Sm": .1}``."""

    @abstractmethod
    def atomic_percent(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        """Element concentrations in at.% over ``elements`` (what WDS measures)."""

    @abstractmethod
    def polar_fraction(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Volume fraction of the switchable ferroelectric phase, 0..1."""

    @abstractmethod
    def phase(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Index into ``phase_names`` of the majority phase."""

    @abstractmethod
    def piezo_amplitude(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Saturated piezoresponse amplitude in pm/V."""

    @abstractmethod
    def coercive_voltage(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Coercive voltage of the PFM loop in V."""

    @abstractmethod
    def thickness_nm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Film thickness in nm."""

    @abstractmethod
    def raman_modes(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, ...]:
        """``(centres, widths, amplitudes)``, each shaped ``(n_modes, *shape(x))``."""

    @abstractmethod
    def lattice_nm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """In-plane spacing of the heavy-atom columns seen by STEM, nm."""

    @abstractmethod
    def fluorescence(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Relative strength of the luminescence background under the Raman spectrum."""

    @abstractmethod
    def eels_edges(self, x: ArrayLike, y: ArrayLike) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """``[(onset_eV, jump, white_line)]``: core-loss edges in ``eels_range_ev``."""

    def pfm_loop(self, bias: np.ndarray, x: float, y: float) -> np.ndarray:
        """Noiseless piezoresponse loop at one position, ``(2, nb)`` pm/V (forward, reverse).

        The default is a phenomenological tanh loop built from this library's switchable
        fraction, amplitude, coercive voltage and thickness (imprint); libraries whose loops
        come from a physics simulator override it.
        """
        f = _scalar(self.polar_fraction(x, y))
        amp = _scalar(self.piezo_amplitude(x, y))
        vc = _scalar(self.coercive_voltage(x, y))
        vmax = self.bias_max_v
        imprint = 0.05 * vmax * (_scalar(self.thickness_nm(x, y)) / 100.0 - 1.0) * 10
        width = 0.04 * vmax + 0.15 * vc
        v = bias - imprint
        forward = f * amp * np.tanh((v - vc) / width)
        reverse = f * amp * np.tanh((v + vc) / width)
        # Non-switching fraction: electrostrictive, hysteresis-free response; plus a small
        # electrostatic background that every real BE-PFM loop carries.
        linear = (1.0 - f) * 0.4 * amp * bias / vmax + 1.5 * bias / vmax
        return np.stack([forward + linear, reverse + linear])

    def mean_z(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Mean atomic number of the heavy (imaged) column: sets HAADF contrast."""
        comp = self.composition(x, y)
        return sum(np.asarray(v) * _Z[k] for k, v in comp.items())

    def ground_truth(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        """Every scalar ground-truth map at (x, y): for benchmarks, never for the HTTP API."""
        out: dict[str, np.ndarray] = {f"frac_{k}": v for k, v in self.composition(x, y).items()}
        out.update({f"at_{k}": v for k, v in self.atomic_percent(x, y).items()})
        out["polar_fraction"] = self.polar_fraction(x, y)
        out["phase"] = self.phase(x, y)
        out["piezo_amplitude"] = self.piezo_amplitude(x, y)
        out["coercive_voltage"] = self.coercive_voltage(x, y)
        out["thickness_nm"] = self.thickness_nm(x, y)
        return out

    def grid(self, nx: int = 101, ny: int = 21) -> tuple[np.ndarray, np.ndarray]:
        """A regular grid over the extent (for maps and benchmark error)."""
        (x0, x1), (y0, y1) = self.extent
        return np.meshgrid(np.linspace(x0, x1, nx), np.linspace(y0, y1, ny))


_Z = {"Bi": 83, "Sm": 62, "Fe": 26, "O": 8, "Al": 13, "Sc": 21, "B": 5, "N": 7}


class SmBFOLibrary(VirtualLibrary):
    """Binary Sm-doped BiFeO3 spread (Kan/Takeuchi-type MPB library)."""

    name = "smbfo"
    extent = ((0.0, 10.0), (0.0, 2.0))
    elements = ("Bi", "Fe", "Sm", "O")
    phase_names = ("R3c ferroelectric", "Pnma orthorhombic")
    bias_max_v = 10.0
    eels_range_ev = (450.0, 800.0)

    s_max = 0.20  # Sm fraction at x = 10 mm
    s_boundary = 0.135  # morphotropic phase boundary
    width = 0.008  # transition width in Sm fraction

    def sm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        x, _ = self.clip(x, y)
        (x0, x1), _ = self.extent
        return self.s_max * (x - x0) / (x1 - x0)

    def composition(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        s = self.sm(x, y)
        return {"Bi": 1.0 - s, "Sm": s}

    def atomic_percent(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        s = self.sm(x, y)
        # Bi(1-s) Sm(s) Fe O3: five atoms per formula unit.
        return {"Bi": 20.0 * (1 - s), "Fe": 20.0 + 0 * s, "Sm": 20.0 * s, "O": 60.0 + 0 * s}

    def polar_fraction(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return 1.0 - _sigmoid((self.sm(x, y) - self.s_boundary) / self.width)

    def phase(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return (self.polar_fraction(x, y) < 0.5).astype(int)

    def piezo_amplitude(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        s = self.sm(x, y)
        f = self.polar_fraction(x, y)
        peak = 60.0 * np.exp(-(((s - self.s_boundary) / 0.012) ** 2))
        _, yy = self.clip(x, y)
        return (10.0 + 30.0 * f + peak) * (1.0 + 0.02 * (yy - 1.0))

    def coercive_voltage(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        s = self.sm(x, y)
        return (5.0 - 15.0 * s) * np.sqrt(self.polar_fraction(x, y)) + 0.3

    def thickness_nm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        xx, yy = self.clip(x, y)
        return 100.0 + 4.0 * (yy - 1.0) - 0.5 * (xx - 5.0) / 5.0

    def raman_modes(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, ...]:
        s = self.sm(x, y)
        f = self.polar_fraction(x, y)
        one = np.ones_like(s)
        # R3c BiFeO3 modes (A1-1..3, E) stiffen as light Sm replaces Bi; in the orthorhombic
        # phase the A1 modes split and the low-frequency doublet is replaced by a triplet.
        r = [
            (140 + 60 * s, 9, 1.0),
            (172 + 50 * s, 10, 0.9),
            (220 + 30 * s, 14, 0.55),
            (265, 18, 0.3),
            (350, 25, 0.2),
            (470, 30, 0.15),
            (550, 35, 0.12),
        ]
        o = [
            (150 + 50 * s, 12, 0.5),
            (167 + 40 * s, 10, 0.55),
            (190 + 40 * s, 12, 0.45),
            (245 + 20 * s, 16, 0.35),
            (290, 20, 0.25),
            (410, 28, 0.2),
            (610, 40, 0.18),
        ]
        centres = np.stack([c * one for c, _, _ in r] + [c * one for c, _, _ in o])
        widths = np.stack([w * one for _, w, _ in r] + [w * one for _, w, _ in o])
        amps = np.stack([a * f for _, _, a in r] + [a * (1 - f) for _, _, a in o])
        return centres, widths, amps

    def lattice_nm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return 0.3962 - 0.01 * self.sm(x, y)

    def fluorescence(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return 0.1 + 1.5 * self.sm(x, y) / self.s_max  # Sm3+ luminescence

    def eels_edges(self, x: ArrayLike, y: ArrayLike) -> list[tuple[float, np.ndarray, np.ndarray]]:
        f = self.polar_fraction(x, y)
        s = self.sm(x, y)
        # O K (532 eV): pre-peak from O2p-Fe3d hybridisation, stronger in the polar phase.
        # Fe L3/L2 (708/721 eV): white lines. Sm M4,5 (1080 eV) is outside the window.
        return [
            (532.0, 1.0 + 0 * s, 0.6 + 0.5 * f),
            (708.0, 0.35 + 0 * s, 2.5 + 0 * s),
            (721.0, 0.2 + 0 * s, 1.2 + 0.2 * f),
        ]


class AlScBNLibrary(VirtualLibrary):
    """Ternary (Al,Sc,B)N spread from three guns; ferroelectric band between two boundaries."""

    name = "alscbn"
    extent = ((0.0, 10.0), (0.0, 10.0))
    elements = ("Al", "Sc", "B", "N")
    phase_names = ("wurtzite (not switchable)", "wurtzite ferroelectric", "non-polar")
    bias_max_v = 20.0
    eels_range_ev = (150.0, 550.0)

    # Gun positions (mm, library frame) and plume length: fractions fall off with distance.
    guns = {"Al": (5.0, -6.0), "Sc": (-4.0, 12.0), "B": (14.0, 12.0)}
    plume_mm = 9.0
    weight = {"Al": 8.0, "Sc": 1.0, "B": 0.8}
    g_switch = 0.35  # lattice-flattening index where switching becomes possible
    g_unstable = 1.0  # wurtzite stability limit
    width = 0.05

    def composition(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        xx, yy = self.clip(x, y)
        w = {
            k: self.weight[k] / (1.0 + ((xx - gx) ** 2 + (yy - gy) ** 2) / self.plume_mm**2) ** 2
            for k, (gx, gy) in self.guns.items()
        }
        total = sum(w.values())
        return {k: v / total for k, v in w.items()}

    def atomic_percent(self, x: ArrayLike, y: ArrayLike) -> dict[str, np.ndarray]:
        c = self.composition(x, y)
        return {"Al": 50 * c["Al"], "Sc": 50 * c["Sc"], "B": 50 * c["B"], "N": 50 + 0 * c["Al"]}

    def flattening(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """How far Sc and B have pushed wurtzite toward a layered hexagonal structure."""
        c = self.composition(x, y)
        return c["Sc"] / 0.40 + c["B"] / 0.25

    def polar_fraction(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        g = self.flattening(x, y)
        return _sigmoid((g - self.g_switch) / self.width) * (
            1.0 - _sigmoid((g - self.g_unstable) / self.width)
        )

    def phase(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        g = self.flattening(x, y)
        return np.where(g < self.g_switch, 0, np.where(g < self.g_unstable, 1, 2))

    def piezo_amplitude(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        g = self.flattening(x, y)
        wurtzite = 1.0 - _sigmoid((g - self.g_unstable) / self.width)
        return 3.0 + (5.0 + 25.0 * np.clip(g, 0, 1.2) ** 2) * wurtzite

    def coercive_voltage(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        g = self.flattening(x, y)
        return np.clip(18.0 * (1.0 - 0.55 * g), 2.0, None) * np.sqrt(self.polar_fraction(x, y))

    def thickness_nm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        xx, yy = self.clip(x, y)
        return 200.0 - 0.8 * ((xx - 5.0) ** 2 + (yy - 5.0) ** 2) / 5.0

    def raman_modes(self, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, ...]:
        c = self.composition(x, y)
        g = self.flattening(x, y)
        wz = 1.0 - _sigmoid((g - self.g_unstable) / self.width)
        sc, b = c["Sc"], c["B"]
        one = np.ones_like(sc)
        # Wurtzite AlN: E2(low) 248, A1(TO) 611, E2(high) 657, E1(TO) 670; Sc softens and
        # broadens them, B stiffens E2(high). The non-polar phase shows one broad band.
        modes = [
            (248 - 40 * sc, 6 + 40 * sc, 0.5 * wz),
            (611 - 120 * sc, 10 + 60 * sc, 0.6 * wz),
            (657 - 150 * sc + 80 * b, 8 + 60 * sc, 1.0 * wz),
            (670 - 110 * sc, 12 + 50 * sc, 0.4 * wz),
            (480 + 0 * sc, 90 + 0 * sc, 0.25 * (1 - wz)),
        ]
        centres = np.stack([m[0] * one for m in modes])
        widths = np.stack([m[1] * one for m in modes])
        amps = np.stack([m[2] * one for m in modes])
        return centres, widths, amps

    def lattice_nm(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        c = self.composition(x, y)
        return 0.311 + 0.06 * c["Sc"] - 0.05 * c["B"]

    def fluorescence(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return 0.2 + 0.5 * self.composition(x, y)["Sc"]

    def eels_edges(self, x: ArrayLike, y: ArrayLike) -> list[tuple[float, np.ndarray, np.ndarray]]:
        c = self.composition(x, y)
        f = self.polar_fraction(x, y)
        # B K (188 eV, sharp pi* in sp2 BN), N K (401 eV), Sc L2,3 (402/407 eV) white lines.
        return [
            (188.0, 2.0 * c["B"], 1.0 + 2.0 * (1 - f)),
            (401.0, 1.0 + 0 * f, 0.4 + 0.4 * f),
            (402.0, 0.6 * c["Sc"], 4.0 + 0 * f),
            (407.0, 0.4 * c["Sc"], 3.0 + 0 * f),
        ]


@dataclass(frozen=True)
class _LGDTable:
    """The LGD simulator's loops at the hidden truth on a fine Sm grid, and what they imply."""

    s: np.ndarray  # (ns,) Sm fractions
    bias: np.ndarray  # (nb,) V
    loops: np.ndarray  # (ns, 2, nb) pm/V
    amplitude: np.ndarray  # (ns,) half the response span over the sweep, pm/V
    coercive: np.ndarray  # (ns,) half the gap between the branches' zero crossings, V


@lru_cache(maxsize=1)
def _lgd_table(n_s: int = 41) -> _LGDTable:
    """Simulated once per process, at first use (about 1-2 s on one core)."""
    s = np.linspace(0.0, SmBFOLibrary.s_max, n_s)
    bias = np.linspace(-SmBFOLibrary.bias_max_v, SmBFOLibrary.bias_max_v, lgd.N_BIAS)
    loops = lgd.simulate_many(s, lgd.HIDDEN, bias)
    loops.setflags(write=False)
    amplitude = (loops[:, :, -1] - loops[:, :, 0]).mean(axis=1) / 2.0
    return _LGDTable(s, bias, loops, amplitude, lgd.coercive_voltage(loops, bias))


class LGDLibrary(SmBFOLibrary):
    """The smbfo spread whose piezoresponse loops come from the LGD simulator
    (:mod:`coorch.lgd`) at its hidden parameters, times a film clamping factor the simulator
    lacks: the twin of a co-navigation campaign, where theory and experiment differ for real.

    The phase boundary (Raman, WDS, STEM, topography) sits at the simulator's hidden ``s_c``,
    so every instrument sees the boundary where the loops close.
    """

    name = "smbfo-lgd"
    s_boundary = lgd.HIDDEN["s_c"]
    clamping_gradient = 0.08
    """Relative change of the piezoresponse per mm along y: substrate clamping relaxes across
    the wafer (0.92 at y = 0, 1.08 at y = 2 mm); the simulator, a function of s only, lacks it."""

    def clamping(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """The term the simulator lacks: a piezoresponse factor varying along y only."""
        _, yy = self.clip(x, y)
        return 1.0 + self.clamping_gradient * (yy - 1.0)

    def _interp(self, values: np.ndarray, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """``values`` (ns, ...) of the table, linearly interpolated to the Sm fraction at x."""
        table = _lgd_table()
        s = np.asarray(self.sm(x, y), float)
        k = np.clip(np.searchsorted(table.s, s, side="right") - 1, 0, len(table.s) - 2)
        w = (s - table.s[k]) / (table.s[k + 1] - table.s[k])
        w = w.reshape(w.shape + (1,) * (values.ndim - 1))
        return (1.0 - w) * values[k] + w * values[k + 1]

    def pfm_loop(self, bias: np.ndarray, x: float, y: float) -> np.ndarray:
        table = _lgd_table()
        loop = self._interp(table.loops, float(x), float(y))  # exact on the table's bias grid
        loop = np.stack([np.interp(bias, table.bias, branch) for branch in loop])
        return _scalar(self.clamping(x, y)) * loop

    def piezo_amplitude(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return self._interp(_lgd_table().amplitude, x, y) * self.clamping(x, y)

    def coercive_voltage(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        return self._interp(_lgd_table().coercive, x, y)


_LIBRARIES: dict[str, type[VirtualLibrary]] = {
    "smbfo": SmBFOLibrary,
    "alscbn": AlScBNLibrary,
    "smbfo-lgd": LGDLibrary,
}
LIBRARY_NAMES: tuple[str, ...] = tuple(_LIBRARIES)


def get_library(name: str) -> VirtualLibrary:
    """The virtual library called ``name`` (one of ``LIBRARY_NAMES``)."""
    try:
        return _LIBRARIES[name]()
    except KeyError:
        raise KeyError(f"unknown library {name!r}; known: {list(_LIBRARIES)}") from None
