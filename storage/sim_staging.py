"""Staging the simulations table: its new rows, and the columns those rows bring.

The decisions table has fixed columns; the simulations table grows a ``param_<name>`` or
``out_<name>`` column the first time a simulation carries that name, and the signal array (plus
its coordinates) with the first simulation that has a signal (``simulations.py`` says why). A
column added to a table that already has rows is written as fill for those rows in the same
commit (``TableWriter.add_column``). Like ``staging.py``: only encodes objects and updates the
in-memory hierarchy; the caller holds the campaign lock and ``Tables.mutex`` and commits.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from coorch.records import Simulation

from . import schema
from .codec import SignalGrid
from .schema import OUTPUT_PREFIX, PARAM_PREFIX, SIMULATION_DIM, SIMULATIONS_GROUP
from .simulations import check_names, simulation_row
from .staging import Staged, check_signal_fits, column_values, create_group, static_arrays
from .tables import Tables
from .zarr_table import Column, TableWriter

GROUP_ATTRS = {"title": "coorch campaign simulations", "Conventions": "CF-1.10"}
_CHUNK_ROWS = 256


def check_fits(tables: Tables, s: Simulation) -> None:
    """Raise ``ValueError`` unless ``s`` can be stored as the table is committed now (names;
    the signal grid, once the table has one). Caller holds ``Tables.mutex``."""
    check_names(s)
    node = tables.hierarchy.nodes.get(SIMULATIONS_GROUP)
    if s.signal is not None and node is not None and "signal" in node["attributes"]:
        check_signal_fits(tables, SIMULATIONS_GROUP, s.signal, s.signal.array())


def stage_simulations(
    tables: Tables, sims: list[Simulation], n_journal: int = 0
) -> tuple[Staged, list[bool], list[int]]:
    """Encode the new rows of the simulations table: (staged, stored-now flag per simulation,
    rejected). Records ``i < n_journal`` come from the journal: one that cannot be stored is
    returned in ``rejected`` instead of raised (its append was acknowledged long ago)."""
    group = SIMULATIONS_GROUP
    staged = Staged()
    flags = [False] * len(sims)
    rejected: list[int] = []
    if not sims:
        return staged, flags, rejected
    if group not in tables.hierarchy.nodes:
        staged.pre.update(
            create_group(
                tables,
                group,
                "simulations",
                SIMULATION_DIM,
                schema.simulation_columns(),
                dict(GROUP_ATTRS),
                {},
            )
        )
    w = tables.table(group)
    n = tables.hierarchy.rows(group)
    w.refresh(n)
    new: list[int] = []
    seen: set[str] = set()
    rows: list[tuple[dict[str, Any], np.ndarray | None]] = []
    for i, s in enumerate(sims):
        if s.simulation_id in w.ids or s.simulation_id in seen:
            continue
        try:
            check_fits(tables, s)
            row, values = simulation_row(s)
            _add_columns(tables, w, s, row, n, staged)
        except ValueError:
            if i >= n_journal:
                raise
            rejected.append(i)
            continue
        seen.add(s.simulation_id)
        new.append(i)
        rows.append((row, values))
    if not new:
        return staged, flags, rejected
    cols = {name: _values(col, rows) for name, col in w.columns.items()}
    staged.chunks.update(w.stage(cols, n))
    staged.metas.update(w.set_rows(tables.hierarchy, n + len(new)))
    staged.done.append((w, n + len(new), [sims[i].simulation_id for i in new], n))
    for i in new:
        flags[i] = True
    return staged, flags, rejected


def _values(col: Column, rows: list[tuple[dict[str, Any], np.ndarray | None]]) -> np.ndarray:
    """One column's values for the new rows: fill where a row has no such key or signal."""
    if col.row_shape:
        return np.stack(
            [np.full(col.row_shape, np.nan) if v is None else np.asarray(v) for _, v in rows]
        )
    return column_values([r.get(col.name, col.fill) for r, _ in rows], col)


def _add_columns(
    tables: Tables,
    w: TableWriter,
    s: Simulation,
    row: dict[str, Any],
    n: int,
    staged: Staged,
) -> None:
    """Add the columns ``s`` needs and the table lacks: its parameters, outputs, signal.
    ``check_fits`` has passed, so nothing here refuses ``s``."""
    for name in row:
        if name in w.columns:
            continue
        kind = "theory parameter" if name.startswith(PARAM_PREFIX) else "simulation output"
        prefix = PARAM_PREFIX if name.startswith(PARAM_PREFIX) else OUTPUT_PREFIX
        col = Column(
            name,
            "float64",
            (SIMULATION_DIM,),
            (),
            {"long_name": f"{kind} {name[len(prefix) :]}"},
            _CHUNK_ROWS,
        )
        staged.chunks.update(w.add_column(tables.hierarchy, col, n))
    attrs = tables.hierarchy.nodes[SIMULATIONS_GROUP]["attributes"]
    if s.signal is None or "signal" in attrs:
        return
    sig = s.signal
    grid = SignalGrid.of_signal(sig)
    shape = tuple(int(d) for d in sig.array().shape)
    data_attrs: dict[str, Any] = {"long_name": sig.long_name or sig.name}
    if sig.units:
        data_attrs["units"] = sig.units
    static = {
        name: (np.asarray(v), {"long_name": name, **_units(grid, name)})
        for name, v in grid.coords.items()
    }
    staged.pre.update(static_arrays(tables, SIMULATIONS_GROUP, static))
    col = Column(
        sig.name,
        "float64",
        (SIMULATION_DIM, *sig.dims),
        shape,
        data_attrs,
        schema.data_chunk_rows(shape),
    )
    staged.chunks.update(w.add_column(tables.hierarchy, col, n))
    attrs.update(signal=sig.name, signal_dims=list(sig.dims))
    node = tables.hierarchy.nodes[SIMULATIONS_GROUP]
    staged.metas[f"{SIMULATIONS_GROUP}/zarr.json"] = json.dumps(node).encode()
    tables.add(SIMULATIONS_GROUP, w, {k: v for k, (v, _) in static.items()})


def _units(grid: SignalGrid, name: str) -> dict[str, str]:
    return {"units": grid.coord_units[name]} if name in grid.coord_units else {}
