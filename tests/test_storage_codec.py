"""decode(encode(record)) == record, through a real store (``storage/codec.py``).

Records are drawn by hypothesis inside the normalisations ``codec.py`` documents (no
``campaign`` on measurements, optional ids ``None`` rather than ``''``, ``human_input`` neither
``""`` nor ``"null"``, a ``long_name`` that is not the signal name).
"""

from __future__ import annotations

import math
import uuid

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coorch.records import STEERING_ACTIONS, Decision, HumanInput, Measurement, Signal
from coorch.storage import CampaignStore
from coorch.storage.codec import (
    SignalGrid,
    decision_from_row,
    decision_row,
    measurement_from_row,
    measurement_row,
)

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
floats = st.floats(allow_nan=False, width=64)
text = st.text(max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
ids = st.text(min_size=1, max_size=16)
optional_id = st.one_of(st.none(), ids)

#: (modality, signal name, dims, shape, coords): one grid per modality, as the store requires.
GRIDS = {
    "pfm_loop": (
        "response",
        ["branch", "bias"],
        (2, 5),
        {"branch": ["up", "down"], "bias": [-1.0, -0.5, 0.0, 0.5, 1.0]},
    ),
    "raman": ("intensity", ["wavenumber"], (7,), {"wavenumber": [float(i) for i in range(7)]}),
    "wds": ("fraction", ["element"], (3,), {"element": ["Bi", "Fe", "Sm"]}),
}
SIGNAL_META = {
    "pfm_loop": ("pm/V", "piezoresponse", {"bias": "V"}),
    "raman": ("counts", "", {"wavenumber": "1/cm"}),
    "wds": ("", "atomic fraction", {}),
}


@st.composite
def measurements(draw: st.DrawFn) -> Measurement:
    modality = draw(st.sampled_from(sorted(GRIDS)))
    name, dims, shape, coords = GRIDS[modality]
    units, long_name, coord_units = SIGNAL_META[modality]
    values = draw(st.lists(floats, min_size=math.prod(shape), max_size=math.prod(shape)))
    signal = Signal(
        name=name,
        dims=dims,
        values=np.reshape(values, shape).tolist(),
        units=units,
        long_name=long_name,
        coords=coords,
        coord_units=coord_units,
    )
    return Measurement(
        measurement_id=f"m-{uuid.uuid4().hex[:8]}-{draw(text)}",
        instrument=draw(text),
        modality=modality,
        sample=draw(text),
        library_x=draw(floats),
        library_y=draw(floats),
        stage_x=draw(floats),
        stage_y=draw(floats),
        started=draw(floats),
        ended=draw(floats),
        signal=signal,
        decision_id=draw(optional_id),
        flow_run_id=draw(optional_id),
    )


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    human = draw(
        st.one_of(
            st.none(),
            st.builds(
                HumanInput,
                operator=text,
                action=st.sampled_from(STEERING_ACTIONS),
                at=floats,
                detail=st.dictionaries(text, st.one_of(text, finite), max_size=3),
                replaced=st.one_of(st.none(), st.dictionaries(text, text, max_size=2)),
            ),
        )
    )
    return Decision(
        decision_id=f"d-{uuid.uuid4().hex[:8]}-{draw(text)}",
        measurement_id=draw(ids),
        instrument=draw(text),
        modality=draw(text),
        library_x=draw(floats),
        library_y=draw(floats),
        policy=draw(text),
        model_version=draw(text),
        trained_on=draw(st.lists(ids, max_size=4)),
        pending=draw(st.lists(ids, max_size=3)),
        acquisition_value=draw(st.floats(width=64)),
        n_candidates=draw(st.integers(0, 2**40)),
        human_input=human,
        created=draw(floats),
        flow_run_id=draw(optional_id),
        task_run_id=draw(optional_id),
        campaign=draw(optional_id),
    )


def same_decision(a: Decision, b: Decision) -> bool:
    """Field equality with NaN == NaN (``acquisition_value`` defaults to NaN)."""
    da, db = a.model_dump(), b.model_dump()
    va, vb = da.pop("acquisition_value"), db.pop("acquisition_value")
    return da == db and (va == vb or (math.isnan(va) and math.isnan(vb)))


@SETTINGS
@given(st.lists(measurements(), min_size=1, max_size=6))
def test_measurements_round_trip_through_a_store(tmp_path_factory, ms):
    for m in ms:  # the row codec alone
        row, values = measurement_row(m)
        assert measurement_from_row(row, values, m.modality, SignalGrid.of(m)) == m
    store = CampaignStore.open(tmp_path_factory.mktemp("c") / "campaign.zarr")
    half = len(ms) // 2
    assert store.append_many(ms[:half]) == [True] * half
    for m in ms[half:]:  # through the journal too
        assert store.append_measurement(m)
    # stored order: modality groups in name order, rows in append order; then a stable sort
    by_group = sorted(ms, key=lambda m: m.modality)
    assert store.read_measurements() == sorted(by_group, key=lambda m: m.ended)


@SETTINGS
@given(st.lists(decisions(), min_size=1, max_size=6))
def test_decisions_round_trip_through_a_store(tmp_path_factory, ds):
    for d in ds:
        assert same_decision(d, decision_from_row(decision_row(d)))
    store = CampaignStore.open(tmp_path_factory.mktemp("c") / "campaign.zarr")
    assert store.append_decisions(ds[:2]) == [True] * len(ds[:2])
    for d in ds[2:]:
        assert store.append_decision(d)
    got = store.read_decisions()
    want = sorted(ds, key=lambda d: d.created)
    assert [d.decision_id for d in got] == [d.decision_id for d in want]
    assert all(same_decision(a, b) for a, b in zip(want, got, strict=True))


def test_empty_store_reads_no_records(tmp_path):
    store = CampaignStore.open(tmp_path / "campaign.zarr")
    assert store.read_measurements() == [] and store.read_decisions() == []


def test_decoder_normalisations():
    """What does not survive the round trip exactly, and what it becomes."""
    d = Decision(
        instrument="afm1",
        modality="pfm_loop",
        library_x=1.0,
        library_y=2.0,
        policy="p",
        flow_run_id="",
        campaign="",
    )
    back = decision_from_row(decision_row(d))
    assert back.human_input is None and back.flow_run_id is None and back.campaign is None
    assert math.isnan(back.acquisition_value)
    row = decision_row(d) | {"trained_on": "", "human_input": "null"}
    assert decision_from_row(row).trained_on == [] and decision_from_row(row).human_input is None
