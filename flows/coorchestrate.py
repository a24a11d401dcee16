"""The co-orchestration flow: several instruments, one agent, measuring at the same time.

Story: connect to each instrument agent (take its lease, load the sample), open the store,
resume what the store holds (or plan a few seed points per instrument), then keep every
instrument busy (:class:`Conductor`): whenever one finishes, its stored measurement is recorded
(described, told to the agent, background work polled) and the instrument gets its next
decision, made here in the flow with the points still being measured elsewhere counted as
pending, then carried out by one ``measure`` task run. No science here: it composes
``coorch.tasks``.

An instrument that stops answering does not stop the campaign: its unfinished decision waits
(stored, queued with its request id), a watchdog probes it, and the others go on
(:mod:`coorch.tasks.availability`); when it answers again its decision is re-issued. A latched
fault is reset and the same request sent again. If the campaign ends with decisions still
waiting for an instrument, the run fails with one line saying so, and running it again resumes
them.

On a facility (``spec.facility``) the instruments are shared with other campaigns: each
measurement waits for its turn on its instrument (priority, then fair share, then arrival) and
holds it only while it measures (:mod:`coorch.tasks.hold`). A campaign with a budget in
instrument-seconds or a deadline ends an instrument when the next measurement would pass them.

Operators steer through :mod:`coorch.flows.steering` when the spec names a steering token:
in review mode an instrument's proposal waits for an answer while the others keep measuring;
redirects and votes arrive between decisions. Everything (measurements, answers, commands)
reaches the flow as an event on one queue, so the agent is only ever used from the flow's
thread.

Progress: one record per measurement on the ``coorch.progress`` logger
(:mod:`coorch.flows.progress`), for whoever shows it.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.futures import PrefectFuture

from coorch.deployments.config import CampaignSpec
from coorch.flows import progress
from coorch.flows.artifacts import CampaignArtifacts
from coorch.flows.steering import Desk, answer_fields
from coorch.records import Decision, HumanInput
from coorch.tasks.availability import FAULTED, LOST, Watchdog
from coorch.tasks.describe import Describer
from coorch.tasks.hold import Exclusive, Shared
from coorch.tasks.live_report import LiveReport
from coorch.tasks.measure import measure, opaque
from coorch.tasks.meter import Ended
from coorch.tasks.runtime import Campaign
from coorch.tasks.setup import (
    Background,
    CampaignResult,
    Instruments,
    background_work,
    build_agent,
    holding,
    seed_plan,
)


def why(d: Decision) -> str:
    """A decision's reason in a few words, for progress lines."""
    if d.human_input is not None:
        return f"{d.human_input.action} by {d.human_input.operator}"
    if d.policy in ("seed", "survey", "operator"):
        return d.policy
    return f"{d.policy} gain/cost={d.acquisition_value:.3g} ({d.model_version})"


def run_name() -> str:
    """A flow run named after its campaign and start time, so the Prefect UI and
    ``coorch steer`` find it by a name an operator recognises."""
    from prefect.runtime import flow_run

    spec = flow_run.parameters["spec"]
    name = spec["name"] if isinstance(spec, dict) else spec.name
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="coorchestrate", flow_run_name=run_name, log_prints=False)
def coorchestrate(spec: CampaignSpec) -> CampaignResult:
    """Run (or resume) the campaign ``spec`` until its measurement budget is spent."""
    return run_campaign(spec)


def run_campaign(spec: CampaignSpec) -> CampaignResult:
    """The story every multi-instrument flow tells (see the module docstring); a
    co-navigation spec (``theory``) adds its simulations to the background work."""
    log = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    token = spec.steering.token()  # an unreadable token file fails before anything moves
    with (
        Instruments.connect(spec) as instruments,
        holding(spec, instruments) as hold,
        instruments.open_store(spec, flow_run_id) as store,
    ):
        agent = build_agent(spec, instruments.descriptions)
        describer = Describer(
            {i.name: i.latent_dim for i in spec.instruments if i.descriptor == "vae"}
        )
        with background_work(spec, agent, log, store, flow_run_id) as work:
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
                target_weight=spec.steering.target_weight,
            )
            done = campaign.resume()
            hold.resumed(done)
            log.info(
                "campaign %s: %d measurements in the store, %d decisions to finish",
                spec.name,
                len(done),
                len(campaign.queue),
            )
            if not done and not campaign.queue:
                campaign.reserve(seed_plan(spec))
            events: queue.Queue = queue.Queue()
            with (
                CampaignArtifacts(spec.name, spec.budget) as art,
                operators(spec, token, flow_run_id, events, log) as desk,
                Watchdog(instruments.reconnect, events, log=log) as watchdog,
            ):
                if work.theory is not None:  # a simulation landed: poll it soon
                    work.theory.wake = lambda: events.put(("background", work.theory))
                conductor = Conductor(
                    spec, campaign, instruments, hold, events, desk, art, watchdog
                )
                conductor.run()
                campaign.finish()
                conductor.publish(work.report)
                if work.theory is not None:
                    art.theory(work.theory.history)
        check_finished(campaign)
        return result(spec, campaign, flow_run_id, work)


class InstrumentsUnavailable(RuntimeError):
    """The campaign ended with decisions still waiting for instruments that stopped
    answering; running it again resumes them."""


def check_finished(campaign: Campaign) -> None:
    """Fail the run, in one line, if an unavailable instrument left decisions unmeasured
    (everything else is stored and the report written by now)."""
    waiting = Counter(d.instrument for d in campaign.unfinished)
    if waiting:
        why = "; ".join(
            f"{name}: {n} waiting ({campaign.unavailable[name]})" for name, n in waiting.items()
        )
        raise InstrumentsUnavailable(
            f"campaign {campaign.name} ended with instruments unavailable, {why}. "
            "Run it again once they answer: the waiting decisions are re-issued."
        )


@contextlib.contextmanager
def operators(
    spec: CampaignSpec, token: str | None, flow_run_id: str, events: queue.Queue, log
) -> Iterator[Desk | None]:
    """The steering desk while the campaign runs (None: nobody may steer, no token)."""
    if token is None:
        yield None
        return
    with Desk(flow_run_id, token, events, deadline_s=spec.steering.deadline_s, log=log) as desk:
        log.info(
            "campaign %s: steerable (%s mode), coorch steer list", spec.name, spec.steering.mode
        )
        yield desk


#: Seconds the run waits, once nothing else is left to do, for instruments that stopped answering
#: (the watchdog probes every 5 s); after that it ends and a resume re-issues their decisions.
UNAVAILABLE_WAIT_S = 30.0
#: Resets of one instrument in a row (each after a fault) before it counts as unavailable.
MAX_RESETS = 3


class Conductor:
    """Keeps every instrument busy until the budget is spent, the operators stop the campaign,
    or nothing is left to do; reads every event (a measurement done, a review answered, an
    operator's command) from one queue, on the flow's thread."""

    def __init__(
        self,
        spec: CampaignSpec,
        campaign: Campaign,
        instruments: Instruments,
        hold: Exclusive | Shared,
        events: queue.Queue,
        desk: Desk | None,
        art: CampaignArtifacts,
        watchdog: Watchdog,
    ) -> None:
        self.spec, self.campaign, self.events, self.desk = spec, campaign, events, desk
        self.art, self.watchdog, self.hold = art, watchdog, hold
        self.faults: Counter = Counter()  # consecutive faults per instrument
        self.waiting_since: float | None = None  # for instruments that stopped answering
        self.history: list[Decision] = []  # what the Prefect UI's decisions table shows
        self.version: str | None = None
        self.clients = instruments.clients
        self.busy: dict[str, Decision] = {}
        self.reviewing: dict[str, Decision] = {}
        self.proposals = 0
        self.reviews = desk is not None and spec.steering.mode == "review"

    def run(self) -> None:
        for name in self.clients:
            self.start(name)
        while (timeout := self.patience()) != 0:
            try:
                kind, *event = self.events.get(timeout=timeout)
            except queue.Empty:  # the unavailable instruments did not come back in time
                return
            if kind == "measured":
                self.measured(*event)
            elif kind == "answer":
                self.answered(*event)
            elif kind == "regained":
                self.history.append(self.campaign.regain(*event))
            elif kind == "background":
                self.campaign.poll(*event)
            else:
                self.steered(*event)
            for name in self.clients:
                self.start(name)

    def patience(self) -> float | None:
        """How long to wait for the next event: as long as it takes (None) while anything is
        under way or held; while only decisions for unavailable instruments are left, up to
        ``UNAVAILABLE_WAIT_S`` in all (an agent restart takes seconds); 0: the run is over."""
        c = self.campaign
        if self.busy or self.reviewing or (c.held and not c.done):
            self.waiting_since = None
            return None
        if not c.unfinished or c.stopped:
            return 0
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
            c.log.info("waiting up to %.0f s for %s", UNAVAILABLE_WAIT_S, sorted(c.unavailable))
        return max(UNAVAILABLE_WAIT_S - (time.monotonic() - self.waiting_since), 0.0)

    def start(self, name: str) -> None:
        """Give an idle instrument its next decision (or open a review of the agent's)."""
        if name in self.busy or name in self.reviewing:
            return
        c = self.campaign
        d = c.queued(name)
        if d is None and self.reviews:
            p = c.propose(name)
            if p is not None and self.review_due(p):
                self.reviewing[name] = p
                self.desk.review(p)
                return
            d = p and c.accept(p)
        elif d is None:
            d = c.decide(name)
        if d is not None:
            self.busy[name] = d
            self.history.append(d)
            fut = measure.submit(*opaque(self.clients[name], c.store, d, self.hold))
            fut.add_done_callback(lambda f, d=d: self.events.put(("measured", d, f)))

    def review_due(self, p: Decision) -> bool:
        self.proposals += 1
        below = self.spec.steering.below
        due = self.proposals % self.spec.steering.every == 0
        return due and (below is None or p.acquisition_value < below)

    def measured(self, d: Decision, fut: PrefectFuture) -> None:
        del self.busy[d.instrument]
        try:
            m = fut.result()
        except LOST as exc:
            self.lost(d, exc)
            return
        except FAULTED as exc:
            self.faulted(d, exc)
            return
        if isinstance(m, Ended):  # the budget in seconds, or the deadline
            self.history.append(self.campaign.end(d, str(m), m.instruments))
            return
        self.faults.pop(d.instrument, None)
        obs = self.campaign.record(m)
        self.start(m.instrument)
        self.art.progress(self.campaign.measured)
        if self.campaign.agent.model_version != self.version:
            self.publish(None)
        progress.report(
            m,
            n=self.campaign.measured,
            budget=self.campaign.budget,
            descriptor=obs.values,
            why=why(d),
        )

    def lost(self, d: Decision, exc: Exception) -> None:
        """``d``'s instrument stopped answering: ``d`` waits, the watchdog probes."""
        self.history.append(self.campaign.lose(d, f"{type(exc).__name__}: {exc}"))
        self.watchdog.watch(d.instrument)

    def faulted(self, d: Decision, exc: Exception) -> None:
        """A fault a retry will not clear: reset the instrument and send ``d`` again (the
        agent measured nothing under its id); after ``MAX_RESETS`` in a row, it is lost."""
        name = d.instrument
        self.faults[name] += 1
        if self.faults[name] > MAX_RESETS:
            self.lost(d, exc)
            return
        self.campaign.log.warning(
            "instrument %s: %s; reset, then %s again", name, exc, d.measurement_id
        )
        try:
            self.clients[name].reset()
        except (*LOST, *FAULTED) as again:
            self.lost(d, again)
            return
        self.campaign.queue.insert(0, d)

    def answered(self, proposal: Decision, fut) -> None:
        del self.reviewing[proposal.instrument]
        log = self.campaign.log
        if fut.exception() is not None:
            log.warning(
                "review of %s failed (%s): the proposal runs",
                proposal.measurement_id,
                fut.exception(),
            )
            fields = {"operator": "deadline (review failed)", "action": "accept"}
        else:
            fields = fut.result()
        try:
            d = self.campaign.answer(proposal, answer_fields(fields))
        except ValueError as exc:  # an override outside the library, an unknown instrument
            log.warning("refused %s's answer (%s): the proposal runs", fields["operator"], exc)
            d = self.campaign.answer(
                proposal, HumanInput(operator=fields["operator"], action="accept")
            )
        if d is not None:
            self.campaign.queue.insert(0, d)  # its instrument may be busy (an override)
        if self.campaign.stopped:
            self.desk.close()

    def publish(self, report: LiveReport | None) -> None:
        """The model summary and the decisions table as Prefect artifacts; the report's link
        once it is written."""
        agent = self.campaign.agent
        self.version = agent.model_version
        self.art.summary(task_summary(self.campaign), self.version)
        self.art.decisions(self.history)
        if report is not None and report.written:
            self.art.report(report.path, f"{self.spec.name}: campaign report")

    def steered(self, human: HumanInput) -> None:
        try:
            self.history.append(self.campaign.steer(human))
        except ValueError as exc:
            self.campaign.log.warning("refused %s from %s: %s", human.action, human.operator, exc)
            return
        self.campaign.log.info("operator %s: %s %s", human.operator, human.action, human.detail)
        if self.campaign.stopped and self.desk is not None:
            self.desk.close()


def task_summary(campaign: Campaign) -> dict[str, dict]:
    """Per instrument: measurements so far and, for a GP agent, the mean posterior standard
    deviation over the candidates relative to the map's prior spread over the library
    (about 1: nothing known; ``Posterior.map_variance``)."""
    agent = campaign.agent
    counts = Counter(campaign.measured_by)
    model = getattr(agent, "model", None)
    sd = None
    if model is not None:
        sd = np.sqrt(model.post.variance() / model.map_variance).mean(0)
    out = {}
    for name, inst in agent.instruments.items():
        row = {"n": counts[name]}
        if sd is not None:
            row["mean_sd"] = float(sd[list(inst.tasks)].mean())
        out[name] = row
    return out


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
        theory=work.theory.report() if work.theory else {},
        hyperparameters=hyper,
    )
