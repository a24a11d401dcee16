"""The campaign store on S3, against a real moto server on loopback (no mocks in-process)."""

from __future__ import annotations

import logging
import os
import threading
import uuid

import numpy as np
import pytest
import xarray as xr

from coorch.benchmarks import fixtures as syn
from coorch.benchmarks.fixtures import moto_endpoint
from coorch.storage import CampaignStore


@pytest.fixture(scope="module")
def moto_server():
    """A real S3 API (moto) on 127.0.0.1 with a free port; dummy credentials."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    with moto_endpoint() as endpoint:
        yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3(moto_server):
    import s3fs

    opts = {"endpoint_url": moto_server, "key": "testing", "secret": "testing"}
    bucket = f"coorch-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**opts).mkdir(bucket)
    return f"s3://{bucket}/campaign.zarr", opts


def test_s3_round_trip_through_plain_xarray(s3):
    url, opts = s3
    store = CampaignStore.open(url, storage_options=opts)
    store.set_metadata(spec={"name": "s3-demo"})
    assert store.append_decision(syn.decision(0))
    ms = [syn.measurement(i, decision_id="d-0") for i in range(4)]
    assert store.append_measurement(ms[0]) is True
    assert store.append_measurement(ms[0]) is False
    assert store.append_many(ms) == [False, True, True, True]
    assert store.append_measurement(syn.measurement(0, "raman")) is True
    store.close()

    ds = xr.open_zarr(url, group="pfm_loop", storage_options=opts)
    assert ds.sizes["measurement"] == 4
    assert list(ds["measurement_id"].values) == [m.measurement_id for m in ms]
    np.testing.assert_array_equal(ds["response"].values[2], ms[2].signal.array())
    assert ds["bias"].attrs["units"] == "V"

    again = CampaignStore.open(url, create=False, storage_options=opts)
    assert again.modalities() == ["pfm_loop", "raman"]
    assert again.metadata()["spec"] == {"name": "s3-demo"}
    assert again.lineage("m-pfm_loop-1")["back"]["decision"]["decision_id"] == "d-0"
    assert again.verify() == []
    assert again.read_modality("raman").sizes["measurement"] == 1


def test_s3_journal_is_consolidated_by_readers(s3):
    url, opts = s3
    writer = CampaignStore.open(url, storage_options=opts, flush_every=1000, flush_interval_s=0)
    for i in range(3):
        writer.append_measurement(syn.measurement(i))
    reader = CampaignStore.open(url, storage_options=opts)
    assert len(reader.measurement_ids()) == 3
    assert xr.open_zarr(url, group="pfm_loop", storage_options=opts).sizes["measurement"] == 3


def test_s3_concurrent_writers_with_the_lock_object(s3):
    url, opts = s3
    CampaignStore.open(url, storage_options=opts)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            st = CampaignStore.open(url, storage_options=opts, flush_every=4)
            for i in range(6):
                st.append_measurement(syn.measurement(i, prefix=f"w{k}"))
            st.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = CampaignStore.open(url, storage_options=opts)
    assert len(store.measurement_ids()) == 18
    assert store.verify() == []


def test_missing_store_without_create(s3):
    url, opts = s3
    with pytest.raises(FileNotFoundError):
        CampaignStore.open(url + "-nope", create=False, storage_options=opts)


def test_s3_stale_lock_of_a_dead_writer_is_broken(s3):
    import json
    import time

    import s3fs

    url, opts = s3
    store = CampaignStore.open(url, storage_options=opts)
    fs = s3fs.S3FileSystem(**opts)
    lock = url.removeprefix("s3://") + "/.coorch-lock"
    fs.pipe_file(lock, json.dumps({"owner": "dead-host:1", "expires": time.time() - 1}).encode())
    assert store.append_many([syn.measurement(0)]) == [True]
    assert not fs.exists(lock)
