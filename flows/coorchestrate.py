"""The co-orchestration flow: several instruments, one policy, measuring at the same time.

Story: connect to each instrument agent (take its lease, load the sample), open the store, seed a
few points per instrument, then keep every instrument busy: whenever one finishes, its
measurement is stored, turned into a descriptor (physics fit, or VAE latents) and told to the
policy, background VAE trainings and GP refits on Dask are started or swapped in, and the
instrument gets its next point, chosen with the points still being measured elsewhere counted
as pending. No science here: it composes ``coorch.tasks``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import PrefectFuture, as_completed

from coorch.deployments.config import CampaignSpec
from coorch.deployments.dask_cluster import dask_client
from coorch.records import Measurement
from coorch.tasks.campaign import CampaignResult, Instruments, build_policy, seed_decisions
from coorch.tasks.fit import BackgroundRefit, BackgroundVAE, needs_fits
from coorch.tasks.ingest import Describer, observe
from coorch.tasks.measure import measure
from coorch.tasks.physics import BackgroundPhysicsFit
from coorch.tasks.resume import resume

Reporter = Callable[[Measurement, dict], None]
_reporter: list[Reporter] = []


@contextlib.contextmanager
def reporting(fn: Reporter) -> Iterator[None]:
    """Call ``fn(measurement, info)`` for each stored measurement of flows run inside."""
    _reporter.append(fn)
    try:
        yield
    finally:
        _reporter.remove(fn)


def _report(m: Measurement, info: dict) -> None:
    for fn in _reporter:
        fn(m, info)


def _why(d) -> str:
    if d.policy == "seed":
        return "seed"
    return f"{d.policy} gain/cost={d.acquisition_value:.3g} ({d.model_version})"


@flow(name="coorchestrate", log_prints=False)
def coorchestrate(spec: CampaignSpec) -> CampaignResult:
    """Run (or resume) the campaign ``spec`` until its measurement budget is spent."""
    log = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    with (Instruments.connect(spec) as instruments,
          instruments.open_store(spec, flow_run_id) as store,
          contextlib.ExitStack() as stack):
        policy = build_policy(spec, instruments.descriptions)
        # Dask fits the GP's hyperparameters and trains VAEs: any policy may read VAE latents
        vae_tasks = any(i.descriptor == "vae" for i in spec.instruments)
        dask = (stack.enter_context(dask_client(spec.dask))
                if needs_fits(policy) or vae_tasks else None)
        refit = BackgroundRefit(dask, policy, every=spec.refit_every)
        physics = BackgroundPhysicsFit(
            dask, policy, {i.name: i.physics_mean for i in spec.instruments if i.physics_mean},
            every=spec.refit_every, seed=spec.seed, log=log)
        describer = Describer(spec)
        vae = BackgroundVAE(dask, describer, policy, refit, seed=spec.seed)
        done, queue = resume(store, policy, describer)
        log.info("campaign %s: %d measurements in the store, %d decisions to finish",
                 spec.name, len(done), len(queue))
        if not done and not queue:
            queue = seed_decisions(spec, policy, instruments, store, flow_run_id)

        in_flight: dict[str, PrefectFuture] = {}
        decided = len(done) + len(queue)

        def next_for(name: str) -> None:
            """Give instrument ``name`` its next measurement: a queued one, else a new one."""
            nonlocal decided
            queued = [d for d in queue if d.instrument == name]
            common = {"modality": instruments.modalities[name], "campaign": spec.name,
                      "flow_run_id": flow_run_id}
            if queued:
                queue.remove(queued[0])
                in_flight[name] = measure.submit(instruments.clients[name], store, name,
                                                 decision=queued[0], **common)
            elif decided < spec.budget:
                decided += 1
                in_flight[name] = measure.submit(instruments.clients[name], store, name,
                                                 policy=policy, **common)

        for name in instruments.clients:
            next_for(name)
        n_done = len(done)
        while in_flight:
            fut = next(iter(as_completed(list(in_flight.values()))))  # the first to finish
            decision, m = fut.result()
            del in_flight[m.instrument]
            obs = observe(policy, describer, [m])[0]
            n_done += 1
            vae.poll()
            refit.poll()
            physics.poll()
            next_for(m.instrument)
            _report(m, {"n": n_done, "budget": spec.budget, "descriptor": obs.values,
                        "why": _why(decision), "fits": refit.fits})
        vae.finish()
        refit.finish()
        physics.finish()
        for line in physics.summary():
            log.info(line)
        report = policy.report()
        log.info("campaign %s finished: %d measurements, model %s", spec.name, n_done,
                 report["model_version"])
        hyper = getattr(getattr(policy, "post", None), "hyper", None)
        return CampaignResult(store=spec.store, flow_run_id=flow_run_id, n_measurements=n_done,
                              n_fits=refit.fits, n_vae_trainings=vae.trainings,
                              policy=report, physics=physics.physics(),
                              hyperparameters=None if hyper is None else {
                                  k: np.asarray(v).tolist() for k, v in vars(hyper).items()})
