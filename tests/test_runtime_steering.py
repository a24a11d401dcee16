"""Operators' inputs in the campaign runtime (no Prefect): reviews, redirects, refusals, and
redirects replayed on resume."""

from __future__ import annotations

import pytest
from test_runtime import campaign, measured

from coorch.records import HumanInput


def ask_all(c, instrument=None) -> list:
    out = []
    while (d := c.decide(instrument)) is not None:
        m = measured(d)
        c.store.append_measurement(m)
        c.record(m)
        out.append(d)
    return out


def test_an_excluded_box_is_never_measured_and_outlives_a_resume(tmp_path):
    url = str(tmp_path / "c.zarr")
    c = campaign(url, budget=8)
    row = c.steer(HumanInput(operator="ann", action="exclude", detail={"box": [0, 4.5, 0, 2]}))
    assert not row.requests_measurement and row.human_input.operator == "ann"
    made = ask_all(c)
    assert len(made) == 8 and all(d.library_x > 4.5 for d in made)
    again = campaign(url, budget=12)
    again.resume()
    assert again.agent.forbidden == c.agent.forbidden != set()
    assert all(d.library_x > 4.5 for d in ask_all(again))


def test_hold_release_and_an_instrument_budget(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"), budget=10)
    c.steer(HumanInput(operator="ann", action="hold", detail={"instrument": "a"}))
    assert c.decide("a") is None and c.decide("b") is not None
    c.steer(HumanInput(operator="ann", action="release", detail={"instrument": "a"}))
    c.steer(HumanInput(operator="ann", action="budget", detail={"instrument": "a", "value": 2}))
    assert len(ask_all(c, "a")) == 2
    assert len(ask_all(c, "b")) == 10 - 3  # one b decided before, two a


def test_a_seed_is_measured_next_and_counts_against_the_budget(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"), budget=3)
    seed = c.steer(HumanInput(operator="bob", action="seed", detail={"instrument": "b", "x": 7}))
    assert seed.requests_measurement and seed.policy == "operator"
    made = ask_all(c)
    assert made[0].measurement_id == seed.measurement_id and made[0].library_x == 7.0
    assert len(made) == 3


@pytest.mark.parametrize(
    "action, detail, why",
    [
        ("weight", {"instrument": "zz", "value": 2}, "unknown instrument"),
        ("vote", {"measurement_id": "m-none", "score": 5}, "no measurement"),
        ("exclude", {"box": [1, 2]}, "a box is"),
        ("seed", {"instrument": "a", "x": 99}, "outside the library"),
        ("explore", {"value": 3}, "0 to 1"),
    ],
)
def test_what_cannot_be_applied_is_refused_and_nothing_is_stored(tmp_path, action, detail, why):
    c = campaign(str(tmp_path / "c.zarr"))
    with pytest.raises(ValueError, match=why):
        c.steer(HumanInput(operator="eve", action=action, detail=detail))
    assert c.store.read_decisions() == [] and not c.queue


def test_a_review_accepts_or_overrides_and_open_proposals_count_against_the_budget(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"), budget=2)
    p, q = c.propose("a"), c.propose("b")
    assert c.store.read_decisions() == [] and c.propose("a") is None  # two open: budget spent
    took = c.answer(p, HumanInput(operator="ann", action="accept"))
    assert took.measurement_id == p.measurement_id
    assert took.human_input.replaced["measurement_id"] == p.measurement_id
    moved = c.answer(q, HumanInput(operator="ann", action="override", detail={"x": 9.0}))
    assert moved.instrument == "b" and moved.library_x == 9.0 and moved.policy == "operator"
    assert moved.human_input.replaced["library_x"] == q.library_x
    stored = {d.measurement_id for d in c.store.read_decisions()}
    assert stored == {took.measurement_id, moved.measurement_id}
    assert c.decide() is None


def test_stop_ends_the_campaign_and_a_review_answered_after_it_runs_nothing(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"), budget=6)
    p = c.propose("a")
    c.steer(HumanInput(operator="ann", action="stop"))
    assert c.done and c.decide("b") is None
    assert c.answer(p, HumanInput(operator="x", action="accept")) is None
    assert [d.human_input.action for d in c.store.read_decisions()] == ["stop"]


def test_votes_are_kept_and_replayed_on_resume(tmp_path):
    url = str(tmp_path / "c.zarr")
    c = campaign(url, budget=3)
    made = ask_all(c)
    for d, score in zip(made, (5, 1, 3), strict=True):
        vote = {"measurement_id": d.measurement_id, "score": score}
        c.steer(HumanInput(operator="carol", action="vote", detail=vote))
    again = campaign(url, budget=3)
    again.resume()
    want = [(d.measurement_id, float(s)) for d, s in zip(made, (5, 1, 3), strict=True)]
    assert again.votes == c.votes == want


def test_an_override_outside_the_library_is_refused_and_the_proposal_still_answerable(tmp_path):
    c = campaign(str(tmp_path / "c.zarr"), budget=2)
    p = c.propose("a")
    with pytest.raises(ValueError, match="outside the library"):
        c.answer(p, HumanInput(operator="eve", action="override", detail={"x": 99.0}))
    assert c.store.read_decisions() == []
    took = c.answer(p, HumanInput(operator="ann", action="accept"))
    assert took.measurement_id == p.measurement_id
