"""The co-orchestration flow: several instruments, one agent, measuring at the same time.

Story: connect to each instrument agent (take its lease, load the sample), open the store,
resume what the store holds (or plan a few seed points per instrument), then keep every
instrument busy: whenever one finishes, its stored measurement is recorded (described, told to
the agent, background work polled) and the instrument gets its next decision, made here in the
flow with the points still being measured elsewhere counted as pending, then carried out by one
``measure`` task run. No science here: it composes ``coorch.tasks``.

Progress: one record per measurement on the ``coorch.progress`` logger
(:mod:`coorch.flows.progress`), for whoever shows it.
"""

from __future__ import annotations

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import PrefectFuture, as_completed

from coorch.deployments.config import CampaignSpec
from coorch.flows import progress
from coorch.records import Decision
from coorch.tasks.describe import Describer
from coorch.tasks.measure import measure
from coorch.tasks.runtime import Campaign
from coorch.tasks.setup import (
    Background,
    CampaignResult,
    Instruments,
    background_work,
    build_agent,
    seed_plan,
)


def why(d: Decision) -> str:
    """A decision's reason in a few words, for progress lines."""
    if d.policy in ("seed", "survey"):
        return d.policy
    return f"{d.policy} gain/cost={d.acquisition_value:.3g} ({d.model_version})"


@flow(name="coorchestrate", log_prints=False)
def coorchestrate(spec: CampaignSpec) -> CampaignResult:
    """Run (or resume) the campaign ``spec`` until its measurement budget is spent."""
    log = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    with (
        Instruments.connect(spec) as instruments,
        instruments.open_store(spec, flow_run_id) as store,
    ):
        agent = build_agent(spec, instruments.descriptions)
        describer = Describer(
            {i.name: i.latent_dim for i in spec.instruments if i.descriptor == "vae"}
        )
        with background_work(spec, agent, log) as work:
            campaign = Campaign(
                spec.name,
                store,
                agent,
                describer,
                instruments.modalities,
                spec.budget,
                list(work),
                flow_run_id,
                log,
            )
            done = campaign.resume()
            log.info(
                "campaign %s: %d measurements in the store, %d decisions to finish",
                spec.name,
                len(done),
                len(campaign.queue),
            )
            if not done and not campaign.queue:
                campaign.reserve(seed_plan(spec))
            in_flight: dict[str, tuple[Decision, PrefectFuture]] = {}

            def submit(name: str) -> None:
                d = campaign.decide(name)
                if d is not None:
                    in_flight[name] = (d, measure.submit(instruments.clients[name], store, d))

            for name in instruments.clients:
                submit(name)
            while in_flight:
                fut = next(iter(as_completed([f for _, f in in_flight.values()])))
                m = fut.result()
                decision, _ = in_flight.pop(m.instrument)
                obs = campaign.record(m)
                submit(m.instrument)
                progress.report(
                    m,
                    n=campaign.measured,
                    budget=spec.budget,
                    descriptor=obs.values,
                    why=why(decision),
                )
            campaign.finish()
        return result(spec, campaign, flow_run_id, work)


def result(
    spec: CampaignSpec, campaign: Campaign, flow_run_id: str, work: Background
) -> CampaignResult:
    """The flow's result: counts, the agent's report, the fitted physics and hyperparameters."""
    report = campaign.agent.report()
    campaign.log.info(
        "campaign %s finished: %d measurements, model %s",
        spec.name,
        campaign.measured,
        report["model_version"],
    )
    model = getattr(campaign.agent, "model", None)  # a multi-task GP agent's posterior
    hyper = (
        None
        if model is None
        else {k: np.asarray(v).tolist() for k, v in vars(model.post.hyper).items()}
    )
    return CampaignResult(
        store=spec.store,
        flow_run_id=flow_run_id,
        n_measurements=campaign.measured,
        n_fits=work.refit.fits if work.refit else 0,
        n_vae_trainings=work.vae.trainings if work.vae else 0,
        policy=report,
        physics=work.physics.physics() if work.physics else {},
        hyperparameters=hyper,
    )
