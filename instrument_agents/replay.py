"""Replay backend: a driver that answers from a pre-acquired dataset.

Real measurements are the strongest test of a policy, and most of them are already on disk.
``ReplayDriver`` serves any xarray-readable file with a ``position`` dimension as if it were an
instrument: a measurement at the current stage position returns the record of the nearest
measured position (optionally with Gaussian noise), through the same HTTP protocol as a twin.

Dataset layouts understood:

* a ``descriptor(modality, position, ...)`` variable with a ``modality`` coordinate (the
  ``smbfo_coorchestration/raman_beps.nc`` layout): each modality value is one modality, and a
  measurement of modality m at position p is ``descriptor[m, p]`` (dims ``["latent"]``);
* otherwise every data variable with a ``position`` dimension is a modality named like the
  variable, its remaining dims being the signal's dims.

Position -> library coordinates: if the dataset has per-position coordinates named
``library_x``/``library_y`` (or ``x``/``y``) on the ``position`` dimension, they are used (mm).
If not, position index ``i`` lies at ``x = i * pitch_mm`` (default 0.1 mm: the 94 positions of
``raman_beps.nc`` span x = 0 .. 9.3 mm) and ``y = y_mm`` (default 1.0 mm, the centre line of the
virtual ``smbfo`` strip, so twin and replay share one library frame). :func:`replay_positions`
returns them. Stage limits are the positions' bounding box plus 0.5 mm in x and 1 mm in y
(y in [0, 2] mm for the default layout); the stage frame is the identity unless ``frame`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from coorch.instrument_agents.frames import AffineFrame
from coorch.instrument_agents.protocol import DriverError
from coorch.records import InstrumentDescription, ModalitySpec, Signal

DEFAULT_PITCH_MM = 0.1
DEFAULT_Y_MM = 1.0


def _open(path_or_ds: str | Path | xr.Dataset) -> xr.Dataset:
    if isinstance(path_or_ds, xr.Dataset):
        return path_or_ds
    return xr.open_dataset(path_or_ds).load()


def replay_positions(
    path_or_ds: str | Path | xr.Dataset,
    pitch_mm: float = DEFAULT_PITCH_MM,
    y_mm: float = DEFAULT_Y_MM,
) -> np.ndarray:
    """Library (x, y) in mm of every position of a replay dataset, shape ``(n_positions, 2)``."""
    ds = _open(path_or_ds)
    if "position" not in ds.dims:
        raise ValueError("a replay dataset needs a 'position' dimension")
    for xn, yn in (("library_x", "library_y"), ("x", "y")):
        if xn in ds.coords and ds[xn].dims == ("position",):
            x = ds[xn].values.astype(float)
            y = (
                ds[yn].values.astype(float)
                if yn in ds.coords and ds[yn].dims == ("position",)
                else np.full_like(x, y_mm)
            )
            return np.column_stack([x, y])
    x = np.arange(ds.sizes["position"], dtype=float) * pitch_mm
    return np.column_stack([x, np.full_like(x, y_mm)])


def _modalities(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    """Modality name -> DataArray with ``position`` first."""
    if "descriptor" in ds.data_vars and "modality" in ds["descriptor"].dims:
        da = ds["descriptor"]
        return {
            str(m): da.sel(modality=m).drop_vars("modality").transpose("position", ...)
            for m in da["modality"].values
        }
    return {
        str(k): v.transpose("position", ...)
        for k, v in ds.data_vars.items()
        if "position" in v.dims
    }


class ReplayDriver:
    """A :class:`~coorch.instrument_agents.protocol.Driver` over pre-acquired data."""

    kind = "replay"

    def __init__(
        self,
        path: str | Path | xr.Dataset,
        modality: str | list[str] | None = None,
        noise: float = 0.0,
        seed: int = 0,
        *,
        pitch_mm: float = DEFAULT_PITCH_MM,
        y_mm: float = DEFAULT_Y_MM,
        cost_s: float | Mapping[str, float] = 1.0,
        instrument_id: str | None = None,
        frame: AffineFrame | None = None,
        margin_mm: tuple[float, float] = (0.5, 1.0),
    ) -> None:
        ds = _open(path)
        self.positions = replay_positions(ds, pitch_mm, y_mm)
        mods = _modalities(ds)
        if modality is not None:
            wanted = [modality] if isinstance(modality, str) else list(modality)
            missing = set(wanted) - set(mods)
            if missing:
                raise KeyError(f"dataset has no modality {sorted(missing)}; has {list(mods)}")
            mods = {k: mods[k] for k in wanted}
        if not mods:
            raise ValueError("no data variable with a 'position' dimension to replay")
        self.data = {k: np.asarray(v.values, float) for k, v in mods.items()}
        self._arrays = mods
        self.noise = float(noise)
        self.cost = {k: float(cost_s[k] if isinstance(cost_s, Mapping) else cost_s) for k in mods}
        name = Path(path).stem if isinstance(path, str | Path) else "dataset"
        self.id = instrument_id or f"replay-{name}"
        self.frame = frame or AffineFrame.identity()
        margin = np.asarray(margin_mm, float)
        lo, hi = self.positions.min(0) - margin, self.positions.max(0) + margin
        sx, sy = self.frame.to_stage(
            np.array([lo[0], hi[0], lo[0], hi[0]]), np.array([lo[1], lo[1], hi[1], hi[1]])
        )
        self.limits = {
            "x": (float(sx.min()), float(sx.max())),
            "y": (float(sy.min()), float(sy.max())),
        }
        self._rng = np.random.default_rng(seed)
        self._pos = np.array(self.frame.to_stage(*self.positions[0]), float)
        self._sample: str | None = name
        self._lock = threading.Lock()
        self.n_measured = 0

    # ----------------------------------------------------------------- Driver protocol
    def describe(self) -> InstrumentDescription:
        specs = []
        for k, da in self._arrays.items():
            dims = [str(d) for d in da.dims[1:]]
            specs.append(
                ModalitySpec(
                    name=k,
                    signal=k,
                    dims=dims,
                    shape=[int(s) for s in da.shape[1:]],
                    units=str(da.attrs.get("units", "")),
                    cost_s=self.cost[k],
                )
            )
        return InstrumentDescription(
            id=self.id,
            kind=self.kind,
            modalities=specs,
            move_cost_s_per_mm=0.0,
            stage_limits=self.limits,
            frame="stage",
            library=None,
            time_scale=0.0,
        )

    def status(self) -> dict[str, Any]:
        return {
            "stage_x": float(self._pos[0]),
            "stage_y": float(self._pos[1]),
            "sample": self._sample,
            "busy": self._lock.locked(),
            "fault": None,
            "n_measured": self.n_measured,
            "position_index": self.nearest(*self._library()),
        }

    def load_sample(self, sample_id: str) -> None:
        self._sample = sample_id

    def move(self, stage_x: float, stage_y: float) -> None:
        self._pos = np.array([stage_x, stage_y], float)

    def measure(self, modality: str, params: dict[str, Any]) -> Signal:
        if modality not in self.data:
            raise DriverError(f"{self.id} has no modality {modality!r}")
        with self._lock:
            i = self.nearest(*self._library())
            values = self.data[modality][i]
            if self.noise > 0:
                values = values + self._rng.normal(0.0, self.noise, values.shape)
            self.n_measured += 1
        da = self._arrays[modality]
        coords = {str(d): da[d].values.tolist() for d in da.dims[1:] if d in da.coords}
        return Signal.from_array(
            modality,
            [str(d) for d in da.dims[1:]],
            values,
            units=str(da.attrs.get("units", "")),
            long_name=str(da.attrs.get("long_name", "")),
            coords=coords,
        )

    def abort(self) -> None:
        """Nothing runs long enough to stop; present so the replay passes the same suite."""

    def reset(self) -> None:
        """Nothing latches in a replay, so there is nothing to clear; being
        :class:`~coorch.instrument_agents.protocol.Resettable` keeps ``POST /v1/reset`` a 200
        here like on every twin (a 501 is for drivers that really cannot reset)."""

    # ----------------------------------------------------------------- helpers
    def _library(self) -> tuple[float, float]:
        x, y = self.frame.to_library(*self._pos)
        return float(x), float(y)

    def nearest(self, x: float, y: float) -> int:
        """Index of the measured position nearest library (x, y)."""
        return int(np.argmin(np.hypot(self.positions[:, 0] - x, self.positions[:, 1] - y)))

    def library_positions(self) -> np.ndarray:
        """Library (x, y) mm of every replayable position, ``(n, 2)``."""
        return self.positions.copy()

    def noiseless(self, modality: str, x: float, y: float) -> np.ndarray:
        """The stored record nearest (x, y): the ground truth for benchmarks."""
        return self.data[modality][self.nearest(x, y)].copy()
