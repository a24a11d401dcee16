"""Export a campaign to formats people open without zarr: NetCDF-4 and Parquet.

NetCDF keeps the xarray structure (one group per modality, plus ``decisions`` and
``simulations``); Parquet flattens each modality to one row per measurement (the simulations to
one row per simulation) with the signal as a list column, which is what dataframe tools and SQL
engines want.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from . import schema
from .store import CampaignStore


def _plain_strings(ds: xr.Dataset) -> xr.Dataset:
    """NetCDF writers want object strings, not numpy's StringDType."""
    for name, var in ds.variables.items():
        if var.dtype.kind == "T":
            ds[name] = var.copy(data=np.asarray(var.values, dtype=object))
    return ds


def export_netcdf(store: CampaignStore, path: Path) -> Path:
    path = Path(path)
    path.unlink(missing_ok=True)
    root = xr.Dataset(
        attrs={
            "title": f"coorch campaign exported from {store.url}",
            "coorch_metadata": json.dumps(store.metadata()),
            "Conventions": "CF-1.10",
        }
    )
    root.to_netcdf(path, mode="w", engine="netcdf4")
    for g in store.modalities():
        ds = _plain_strings(store.read_modality(g).load())
        ds.attrs = {
            k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in ds.attrs.items()
        }
        ds.to_netcdf(path, mode="a", group=g, engine="netcdf4")
    if not store.decisions().empty:
        dec = store.read_dataset(schema.DECISIONS_GROUP).load()
        _plain_strings(dec).to_netcdf(
            path, mode="a", group=schema.DECISIONS_GROUP, engine="netcdf4"
        )
    if not store.simulations().empty:
        sims = store.read_dataset(schema.SIMULATIONS_GROUP).load()
        sims.attrs = {
            k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in sims.attrs.items()
        }
        _plain_strings(sims).to_netcdf(
            path, mode="a", group=schema.SIMULATIONS_GROUP, engine="netcdf4"
        )
    return path


def export_parquet(store: CampaignStore, folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mt = store.measurements_table()
    for g in store.modalities():
        ds = store.read_modality(g)
        sig = ds.attrs["signal"]
        values = np.asarray(ds[sig].values)
        df = mt[mt["modality"] == g].reset_index(drop=True).copy()
        df[sig] = [row.ravel().tolist() for row in values]
        meta = {
            "signal": sig,
            "dims": list(ds[sig].dims[1:]),
            "shape": list(values.shape[1:]),
            "units": ds[sig].attrs.get("units", ""),
            "coords": {
                d: np.asarray(ds[d].values).tolist() for d in ds[sig].dims[1:] if d in ds.coords
            },
        }
        df.attrs = {}
        table_path = folder / f"{g}.parquet"
        df.to_parquet(table_path, index=False)
        (folder / f"{g}.signal.json").write_text(json.dumps(meta, default=str))
    dec = store.decisions()
    if not dec.empty:
        dec.assign(human_input=[json.dumps(v) for v in dec["human_input"]]).to_parquet(
            folder / "decisions.parquet", index=False
        )
    sims = store.simulations()
    if not sims.empty:
        sig = store.reader.group_attrs(schema.SIMULATIONS_GROUP).get("signal")
        if sig:
            values = np.asarray(store.read_dataset(schema.SIMULATIONS_GROUP)[sig].values)
            sims[sig] = [row.ravel().tolist() for row in values]
        sims.to_parquet(folder / "simulations.parquet", index=False)
    (folder / "metadata.json").write_text(json.dumps(store.metadata(), indent=1))
    return folder


__all__ = ["export_netcdf", "export_parquet"]
