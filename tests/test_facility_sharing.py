"""Campaigns sharing a facility's instruments: random mixes of campaigns (hypothesis), run as
real ``coorchestrate`` flows at once against real twins, checked from each part's own records.

- no instrument ever runs two campaigns' commands at once: the agents' command logs
  (:func:`~coorch.instrument_agents.command_log.interleaved`);
- no sample is in two places: the registry's transfer log, replayed, ends where the registry
  says each sample is, and no instrument holds two;
- higher priority never waits behind lower priority for a free instrument: every grant of the
  arbiter, against the waiters it had;
- every budget is honoured: measurements in the store, instrument-seconds in the arbiter's
  ledger; nothing stored twice.

The campaigns run in threads of this process, under the session's Prefect test server (the
slots' leases never need to lapse here: nobody crashes); the random policy keeps each flow
cheap, so a mix takes seconds.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coorch.deployments.config import CampaignSpec, InstrumentConfig
from coorch.instrument_agents.command_log import interleaved
from coorch.instrument_agents.launch import start_twin
from coorch.storage import CampaignStore

KINDS = {"afm": "pfm_loop", "raman": "raman"}

campaign = st.fixed_dictionaries(
    {
        "priority": st.integers(0, 2),
        "owner": st.sampled_from(["ana", "ben"]),
        "instruments": st.sets(st.sampled_from(sorted(KINDS)), min_size=1),
        "budget": st.integers(2, 6),
        "budget_s": st.one_of(st.none(), st.floats(40.0, 400.0)),
    }
)


def run_mix(tmp, mix: list[dict]) -> dict:
    """Serve fresh twins (with command logs), run every campaign of ``mix`` at once in
    threads; the facility database, stores and logs are in ``tmp``."""
    from coorch.flows.coorchestrate import coorchestrate

    token = secrets.token_hex(8)
    (tmp / "agent.token").write_text(token)
    agents = {
        kind: start_twin(kind, token=token, seed=i, time_scale=0.0005, command_log=tmp / kind)
        for i, kind in enumerate(KINDS)
    }
    db = f"sqlite:///{tmp / 'facility.db'}"
    specs = [
        CampaignSpec(
            name=f"c{i}",
            owner=c["owner"],
            priority=c["priority"],
            policy="random",
            budget=c["budget"],
            budget_s=c["budget_s"],
            seeds_per_instrument=1,
            grid=(11, 3),
            store=str(tmp / f"c{i}.zarr"),
            report="",
            facility=db,
            instruments=[
                InstrumentConfig(
                    name=agents[k].driver.describe().id,
                    kind=k,
                    modality=KINDS[k],
                    url=agents[k].url,
                    token_file=tmp / "agent.token",
                    sample=f"lib{i}.{k}",
                )
                for k in sorted(c["instruments"])
            ],
        )
        for i, c in enumerate(mix)
    ]
    errors: list[BaseException] = []

    def run(spec: CampaignSpec) -> None:
        try:
            coorchestrate(spec)
        except BaseException as exc:  # reported below, with the others' results
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in specs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        for a in agents.values():
            a.stop()
    assert not errors, errors
    return {"db": db, "specs": specs, "logs": [tmp / k for k in KINDS]}


def check_rules(ran: dict) -> None:
    from coorch.deployments.arbiter import Arbiter
    from coorch.storage.samples import STORAGE, SampleRegistry

    # no instrument ran two campaigns' commands at once, by its own log
    for log in ran["logs"]:
        assert interleaved(log) == []
    # no sample in two places
    registry = SampleRegistry(ran["db"])
    try:
        where = {s.id: STORAGE for s in registry.all()}
        for t in registry.transfers():
            assert where[t.sample] == t.source, t
            where[t.sample] = t.destination
        samples = registry.all()
        assert {s.id: s.location for s in samples} == where
        held = Counter(s.location for s in samples if s.location != STORAGE)
        assert all(n == 1 for n in held.values()), held
    finally:
        registry.close()
    # priority never waited behind a lower one, and budgets held
    arbiter = Arbiter(ran["db"])
    for g in arbiter.grants():
        assert g.outranked_by is None or g.outranked_by <= g.priority, g
    for spec in ran["specs"]:
        if spec.budget_s is not None:
            assert arbiter.used(spec.name) <= spec.budget_s + 1e-6
        table = CampaignStore.open(spec.store, create=False).measurements_table()
        assert len(table) <= spec.budget
        assert table["measurement_id"].is_unique


@pytest.mark.slow
@settings(
    max_examples=3,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # each example runs flows: no shrinking
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mix=st.lists(campaign, min_size=2, max_size=3))
def test_shared_instruments_keep_the_rules(prefect_server, tmp_path_factory, mix):
    ran = run_mix(tmp_path_factory.mktemp("mix"), mix)
    check_rules(ran)
