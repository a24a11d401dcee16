"""The mechanics every digital twin shares: stage, sample, time model, drift, faults, abort.

A twin is a :class:`~coorch.instrument_agents.protocol.Driver` whose physics lives in a few
``Mode`` objects (one per modality: a noiseless renderer plus a noise model over a virtual
library). Keeping the mechanics here means the four instruments differ only in their physics,
and a campaign on twins exercises exactly the code paths a real instrument would.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coorch.instrument_agents.faults import FaultInjector
from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.libraries import VirtualLibrary, get_library
from coorch.instrument_agents.protocol import Aborted, DriverError, ResponseLost
from coorch.records import InstrumentDescription, ModalitySpec, Signal

Renderer = Callable[[np.ndarray, np.ndarray], np.ndarray]
NoiseModel = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass
class Mode:
    """One modality of a twin: what it returns (dims, coords, units), what it costs, its physics.

    ``render(x, y)`` gives the exact expected signal at library position (x, y) (scalars);
    ``noise(clean, rng)`` turns it into one noisy acquisition.
    """

    name: str
    signal: str
    dims: list[str]
    coords: dict[str, list[Any]]
    units: str
    coord_units: dict[str, str]
    cost_s: float
    render: Renderer
    noise: NoiseModel
    long_name: str = ""

    @property
    def shape(self) -> list[int]:
        return [len(self.coords[d]) for d in self.dims]

    def spec(self) -> ModalitySpec:
        return ModalitySpec(
            name=self.name,
            signal=self.signal,
            dims=self.dims,
            shape=self.shape,
            units=self.units,
            coord_units=self.coord_units,
            cost_s=self.cost_s,
        )


@dataclass
class Drift:
    """A slow, bounded (mean-reverting) random walk of the probe relative to the sample (mm)."""

    step_mm: float = 0.002
    bound_mm: float = 0.02
    offset: np.ndarray = field(default_factory=lambda: np.zeros(2))

    def advance(self, rng: np.random.Generator) -> np.ndarray:
        revert = 1.0 - self.step_mm / max(self.bound_mm, 1e-12)
        self.offset = revert * self.offset + rng.normal(0.0, self.step_mm, 2)
        return self.offset


def stage_limits_for(
    library: VirtualLibrary, frame: AffineFrame, margin_mm: float = 0.5
) -> dict[str, tuple[float, float]]:
    """Soft limits: the library's footprint on the stage plus a margin (never off the sample)."""
    (x0, x1), (y0, y1) = library.extent
    sx, sy = frame.to_stage(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]))
    return {
        "x": (float(sx.min() - margin_mm), float(sx.max() + margin_mm)),
        "y": (float(sy.min() - margin_mm), float(sy.max() + margin_mm)),
    }


class TwinDriver:
    """Base digital twin. Subclasses set ``kind``, the costs and implement ``_modes()``."""

    kind: str = "twin"
    move_cost_s_per_mm: float = 1.0
    sample_load_cost_s: float = 60.0
    latch_message: str = "instrument fault latched"

    def __init__(
        self,
        library: str | VirtualLibrary = "smbfo",
        *,
        seed: int = 0,
        time_scale: float = 0.0,
        fault_rate: float = 0.0,
        instrument_id: str | None = None,
        frame: AffineFrame | None = None,
        hang_s: float | None = None,
        fault_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.library = get_library(library) if isinstance(library, str) else library
        self.seed = seed
        self.time_scale = float(time_scale)
        self.id = instrument_id or f"{self.kind}-twin"
        self.frame = frame or self.default_frame()
        # A hang outlasts any sensible client timeout at the real time scale, but stays short
        # when the twin runs fast (tests, demo).
        self.hang_s = hang_s if hang_s is not None else max(1.0, 300.0 * self.time_scale)
        self.faults = FaultInjector(fault_rate, seed=seed, weights=fault_weights)
        self.modes: dict[str, Mode] = {m.name: m for m in self._modes()}
        self.limits = stage_limits_for(self.library, self.frame)
        self._rng = np.random.default_rng([seed, zlib.crc32(self.kind.encode())])
        self._drift = Drift()
        (x0, x1), (y0, y1) = self.library.extent
        sx, sy = self.frame.to_stage((x0 + x1) / 2, (y0 + y1) / 2)
        self._pos = np.array([sx, sy], float)
        self._sample: str | None = self.library.name
        self._fault: str | None = None
        self._abort = threading.Event()
        self._lock = threading.Lock()
        self.n_measured = 0  # acquisitions actually performed (exactly-once tests count these)

    # ----------------------------------------------------------------- subclass hooks
    def default_frame(self) -> AffineFrame:
        """How this instrument's stage sees the library when the sample is mounted."""
        return AffineFrame.from_rotation(0.5, (10.0, 5.0))

    def _modes(self) -> list[Mode]:
        raise NotImplementedError

    # ----------------------------------------------------------------- Driver protocol
    def describe(self) -> InstrumentDescription:
        return InstrumentDescription(
            id=self.id,
            kind=self.kind,
            modalities=[m.spec() for m in self.modes.values()],
            move_cost_s_per_mm=self.move_cost_s_per_mm,
            sample_load_cost_s=self.sample_load_cost_s,
            stage_limits=self.limits,
            frame="stage",
            library=self.library.name,
            time_scale=self.time_scale,
        )

    def status(self) -> dict[str, Any]:
        return {
            "stage_x": float(self._pos[0]),
            "stage_y": float(self._pos[1]),
            "sample": self._sample,
            "busy": self._lock.locked(),
            "fault": self._fault,
            "n_measured": self.n_measured,
        }

    def load_sample(self, sample_id: str) -> None:
        with self._busy():
            if sample_id != self._sample:
                self._sleep(self.sample_load_cost_s)
                self._sample = sample_id

    def move(self, stage_x: float, stage_y: float) -> None:
        with self._busy():
            target = np.array([stage_x, stage_y], float)
            self._sleep(self.move_cost_s_per_mm * float(np.hypot(*(target - self._pos))))
            self._pos = target

    def measure(self, modality: str, params: dict[str, Any]) -> Signal:
        mode = self.modes.get(modality)
        if mode is None:
            raise DriverError(f"{self.id} has no modality {modality!r}")
        with self._busy():
            if self._fault:
                raise DriverError(f"{self._fault}; POST /v1/reset to clear", transient=False)
            if self._sample is None:
                raise DriverError("no sample loaded", transient=False)
            fault = self.faults.draw()
            if fault == "transient":
                raise DriverError("transient instrument error (simulated)", transient=True)
            if fault == "latch":
                self._fault = self.latch_message
                raise DriverError(f"{self._fault}; POST /v1/reset to clear", transient=False)
            if fault == "hang":
                self._sleep(self.hang_s, scaled=False)
            self._sleep(mode.cost_s)
            lx, ly = self.frame.to_library(*self._pos)
            dx, dy = self._drift.advance(self._rng)
            clean = mode.render(np.asarray(lx + dx), np.asarray(ly + dy))
            values = mode.noise(clean, self._rng)
            self.n_measured += 1
            signal = Signal.from_array(
                mode.signal,
                mode.dims,
                values,
                units=mode.units,
                long_name=mode.long_name,
                coords=mode.coords,
                coord_units=mode.coord_units,
            )
            if fault == "disconnect":
                raise ResponseLost(signal)
            return signal

    def abort(self) -> None:
        self._abort.set()

    def reset(self) -> None:
        """Clear a latched fault (a new tip, a re-aligned beam) and any pending abort."""
        self._fault = None
        self._abort.clear()

    # ----------------------------------------------------------------- ground truth
    def noiseless(self, modality: str, x: float, y: float) -> np.ndarray:
        """The exact expected signal at library (x, y): benchmarks only, never over HTTP."""
        return self.modes[modality].render(np.asarray(float(x)), np.asarray(float(y)))

    def fiducials(self, noise_mm: float = 0.002) -> tuple[np.ndarray, np.ndarray]:
        """The library's corner marks as an operator would locate them on this stage.

        Returns ``(library_pts, stage_pts)``, each ``(4, 2)`` mm, the stage points with a small
        click error; feed them to ``AffineFrame.fit`` or ``InstrumentClient.set_frame``.
        """
        (x0, x1), (y0, y1) = self.library.extent
        lib = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)
        sx, sy = self.frame.to_stage(lib[:, 0], lib[:, 1])
        click = np.random.default_rng([self.seed, 0xF1D]).normal(0.0, noise_mm, lib.shape)
        return lib, np.column_stack([sx, sy]) + click

    # ----------------------------------------------------------------- helpers
    def _busy(self) -> _BusyGuard:
        return _BusyGuard(self)

    def _sleep(self, seconds: float, *, scaled: bool = True) -> None:
        dt = seconds * self.time_scale if scaled else seconds
        if dt > 0 and self._abort.wait(dt):
            raise Aborted("aborted")
        if self._abort.is_set():
            raise Aborted("aborted")


class _BusyGuard:
    """One operation at a time; a second caller gets a transient 'busy' (retry later)."""

    def __init__(self, twin: TwinDriver) -> None:
        self.twin = twin

    def __enter__(self) -> None:
        if not self.twin._lock.acquire(blocking=False):
            raise DriverError("instrument busy", transient=True)
        self.twin._abort.clear()

    def __exit__(self, *exc: object) -> None:
        self.twin._lock.release()
