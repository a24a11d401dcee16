"""``coorch bench ingest``: what provenance costs compared with bare zarr writes.

For each target (local disk, S3 on a moto server started here on loopback) and each demo shape
(2x64 PFM loop, 512-point Raman spectrum) the same pre-built records are written, one spectrum
at a time ("single") and in blocks of ``--batch`` ("batch"), three ways:

- ``zarr data``: zarr-python, ``resize`` + write of the data array only (no coordinates);
- ``zarr arrays``: zarr-python, ``resize`` + write of the same 13 arrays the store keeps (data
  plus the 12 per-measurement coordinates, same names, dtypes, chunks and codec), values
  precomputed: everything the store writes, minus provenance;
- ``store``: ``CampaignStore.append_measurement`` (journal, batched consolidation; timed until
  ``close()`` has consolidated everything) or ``append_many`` (ids, hashes, lock, atomic commit).

Both sides use the same chunking and codec (zstd level 1). Throughput is spectra/s and MB/s of
signal payload. "vs same arrays" is the cost of provenance proper; "vs data only" also charges
the store for keeping coordinates at all.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import zarr
from rich.console import Console
from rich.table import Table

from coorch.storage import CampaignStore, codec, schema
from coorch.storage.schema import data_chunk_rows

from . import fixtures

SHAPES = {"pfm_loop": (2, 64), "raman": (512,)}


def _zarr_group(
    url: str,
    opts: dict[str, Any] | None,
    row_shape: tuple[int, ...],
    signal: str,
    with_coords: bool,
) -> dict[str, Any]:
    """Bare zarr-python arrays: the data array, and optionally the store's coordinates."""
    store: Any
    if "://" in url:
        store = zarr.storage.FsspecStore.from_url(url, storage_options=opts)
    else:
        store = zarr.storage.LocalStore(url)
    g = zarr.open_group(store, mode="w", zarr_format=3)
    zstd = zarr.codecs.ZstdCodec(level=1)
    arrays = {
        signal: g.create_array(
            signal,
            shape=(0, *row_shape),
            chunks=(data_chunk_rows(row_shape), *row_shape),
            dtype="float64",
            compressors=zstd,
        )
    }
    if with_coords:
        for name, dtype, _ in schema.MEASUREMENT_COORDS:
            arrays[name] = g.create_array(
                name,
                shape=(0,),
                chunks=(1024,),
                dtype=str if dtype == "string" else dtype,
                compressors=zstd,
            )
    return arrays


def _shape_cases(
    base_url: str,
    opts: dict[str, Any] | None,
    n: int,
    n_single: int,
    batch: int,
    target: str,
    modality: str,
) -> list[dict[str, Any]]:
    row_shape = SHAPES[modality]
    rng = np.random.default_rng(0)
    ms = [fixtures.measurement(i, modality, rng=rng, prefix=uuid.uuid4().hex[:6]) for i in range(n)]
    signal = ms[0].signal.name
    rows = [codec.measurement_row(m) for m in ms]
    columns: dict[str, np.ndarray] = {signal: np.stack([r[1] for r in rows])}
    for name, dtype, _ in schema.MEASUREMENT_COORDS:
        columns[name] = np.asarray(
            [r[0][name] for r in rows], dtype=object if dtype == "string" else dtype
        )
    row_mb = 8 * int(np.prod(row_shape)) / 1e6

    lat: list[float] = []  # per-call latency of the single-mode cases

    def bare(url: str, count: int, step: int, with_coords: bool) -> None:
        arrays = _zarr_group(url, opts, row_shape, signal, with_coords)
        for i in range(0, count, step):
            t = time.perf_counter()
            j = min(i + step, count)
            for name, arr in arrays.items():
                arr.resize((j, *arr.shape[1:]))
                arr[i:j] = columns[name][i:j]
            lat.append(time.perf_counter() - t)

    def store_single(url: str) -> None:
        st = CampaignStore.open(url, storage_options=opts)
        for m in ms[:n_single]:
            t = time.perf_counter()
            st.append_measurement(m)
            lat.append(time.perf_counter() - t)
        st.close()

    def store_batch(url: str) -> None:
        st = CampaignStore.open(url, storage_options=opts)
        for i in range(0, n, batch):
            st.append_many(ms[i : i + batch])

    cases: list[tuple[str, str, Callable[[str], None], int]] = [
        ("single", "zarr data", lambda u: bare(u, n_single, 1, False), n_single),
        ("single", "zarr arrays", lambda u: bare(u, n_single, 1, True), n_single),
        ("single", "store", store_single, n_single),
        ("batch", "zarr data", lambda u: bare(u, n, batch, False), n),
        ("batch", "zarr arrays", lambda u: bare(u, n, batch, True), n),
        ("batch", "store", store_batch, n),
    ]
    results = []
    for mode, name, fn, count in cases:
        url = f"{base_url}/{modality}-{mode}-{name.replace(' ', '-')}-{uuid.uuid4().hex[:6]}.zarr"
        lat.clear()
        t = time.perf_counter()
        fn(url)
        seconds = time.perf_counter() - t
        r = {
            "target": target,
            "modality": modality,
            "shape": list(row_shape),
            "mode": mode,
            "writer": name,
            "n": count,
            "seconds": seconds,
            "spectra_per_s": count / seconds,
            "mb_per_s": count * row_mb / seconds,
            "batch": batch if mode == "batch" else 1,
        }
        if mode == "single" and lat:
            r["latency_ms_p50"] = 1e3 * float(np.percentile(lat, 50))
            r["latency_ms_p95"] = 1e3 * float(np.percentile(lat, 95))
            r["latency_ms_max"] = 1e3 * float(np.max(lat))
        results.append(r)
    return results


def run_cases(
    base_url: str, opts: dict[str, Any] | None, n: int, n_single: int, batch: int, target: str
) -> list[dict[str, Any]]:
    """All write paths for both shapes under ``base_url``; one result dict per case."""
    results = []
    for modality in SHAPES:
        results += _shape_cases(base_url, opts, n, n_single, batch, target, modality)
    for r in results:
        same = [
            x
            for x in results
            if x["target"] == r["target"]
            and x["modality"] == r["modality"]
            and x["mode"] == r["mode"]
        ]
        data = next(x for x in same if x["writer"] == "zarr data")
        arrays = next(x for x in same if x["writer"] == "zarr arrays")
        r["vs_zarr_data"] = r["spectra_per_s"] / data["spectra_per_s"]
        r["vs_zarr_arrays"] = r["spectra_per_s"] / arrays["spectra_per_s"]
    return results


def run_bench(
    n: int = 1000,
    n_single: int = 200,
    batch: int = 64,
    s3: bool = True,
    s3_n: int = 256,
    s3_single: int = 8,
    workdir: Path | None = None,
) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="coorch-bench-", dir=workdir))
    try:
        results = run_cases(str(tmp), None, n, n_single, batch, "local")
        if s3:
            results += _run_s3(s3_n, s3_single, batch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _run_s3(n: int, n_single: int, batch: int) -> list[dict[str, Any]]:
    import s3fs

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    try:
        with fixtures.moto_endpoint() as endpoint:
            opts = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
            s3fs.S3FileSystem(**opts).mkdir("coorch-bench")
            return run_cases("s3://coorch-bench", opts, n, n_single, batch, "s3 (moto)")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def bench_ingest_command(
    n: Annotated[int, typer.Option(min=1, help="spectra per batch case (local)")] = 1000,
    n_single: Annotated[
        int, typer.Option(min=1, help="spectra per single-append case (local)")
    ] = 200,
    batch: Annotated[
        int, typer.Option(min=1, help="spectra per append_many / zarr block write")
    ] = 64,
    s3: Annotated[bool, typer.Option("--s3/--no-s3", help="also run on a moto S3 server")] = True,
    s3_n: Annotated[int, typer.Option(min=1, help="spectra per batch case on S3")] = 256,
    s3_single: Annotated[int, typer.Option(min=1, help="spectra per single case on S3")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    workdir: Annotated[
        Path | None, typer.Option(help="where local stores go (a temp dir inside it)")
    ] = None,
) -> None:
    """Spectra/s and MB/s of provenance appends vs bare zarr writes, local and S3 (moto)."""
    results = run_bench(
        n=n, n_single=n_single, batch=batch, s3=s3, s3_n=s3_n, s3_single=s3_single, workdir=workdir
    )
    if as_json:
        print(json.dumps(results, indent=1))
        return
    table = Table(title="coorch bench ingest (MB/s counts signal payload only)")
    for c in (
        "target",
        "modality",
        "mode",
        "writer",
        "n",
        "spectra/s",
        "MB/s",
        "vs same arrays",
        "vs data only",
        "call p50/p95 ms",
    ):
        table.add_column(
            c, justify="left" if c in ("target", "modality", "mode", "writer") else "right"
        )
    for r in results:
        table.add_row(
            r["target"],
            r["modality"],
            r["mode"],
            r["writer"],
            str(r["n"]),
            f"{r['spectra_per_s']:.0f}",
            f"{r['mb_per_s']:.2f}",
            f"{r['vs_zarr_arrays']:.2f}x",
            f"{r['vs_zarr_data']:.2f}x",
            f"{r['latency_ms_p50']:.1f} / {r['latency_ms_p95']:.1f}"
            if "latency_ms_p50" in r
            else "",
        )
    Console(width=None if sys.stdout.isatty() else 150).print(table)
