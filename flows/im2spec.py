"""The image -> spectrum (im2spec) flow: image everywhere, measure spectra where the model asks.

Story (Roccapriore, Ziatdinov et al. 2022): connect to one instrument (lease, sample), open the
store, take the cheap structure image at every candidate position (each stored with a
``survey`` decision), then spend the spectrum budget: a few seed spectra spread along the
library, after which a deep-kernel model of "structure patch -> spectral descriptor"
(:class:`coorch.models.dkl_policy.Im2SpecPolicy`) picks each next position where it is most
uncertain (or expects most improvement). Every spectrum goes through the ``measure`` task, so its
decision (model version, training set including the images, acquisition value) is stored before
the instrument moves, and a crashed run resumes from the store without measuring twice.
No science here: it composes ``coorch.tasks`` and ``coorch.models``.
"""

from __future__ import annotations

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import get_run_context
from pydantic import BaseModel

from coorch.deployments.im2spec_config import Im2SpecSpec
from coorch.models.descriptors import describe, edge_peak_ratio
from coorch.models.dkl_policy import Im2SpecPolicy
from coorch.models.policies import InstrumentModel, Observation
from coorch.records import Decision, Measurement
from coorch.storage import CampaignStore
from coorch.tasks.campaign import Instruments, candidate_grid, library_extent, seed_decisions
from coorch.tasks.measure import measure
from coorch.tasks.resume import stored_decisions, stored_measurements

SURVEY = "survey"  # the policy name on the structure images' decisions


class Im2SpecResult(BaseModel):
    """What an im2spec flow run returns."""

    store: str
    flow_run_id: str
    n_structure: int
    n_spectra: int
    n_fits: int
    policy: dict


def spectral_value(spec: Im2SpecSpec, m: Measurement) -> np.ndarray:
    """The property of one spectrum, as the spec's descriptor defines it."""
    if spec.descriptor == "edge_ratio":
        pre, peak, post = spec.edge_windows
        return edge_peak_ratio(m.signal, pre, peak, post)
    return describe(m.modality, m.signal)


def _observation(spec: Im2SpecSpec, m: Measurement) -> Observation:
    return Observation(instrument=m.instrument, x=np.array([m.library_x, m.library_y]),
                       values=spectral_value(spec, m), measurement_id=m.measurement_id)


def _nearest(candidates: np.ndarray, x: float, y: float) -> int:
    return int(np.argmin(((candidates - np.array([x, y])) ** 2).sum(1)))


def survey(spec: Im2SpecSpec, instruments: Instruments, store: CampaignStore,
           candidates: np.ndarray, done: list[Measurement], flow_run_id: str
           ) -> tuple[np.ndarray, list[str]]:
    """The structure image at every candidate: (images (m, h, w), measurement ids (m,)).

    Images already in the store are reused; survey decisions stored without an image are
    re-issued with their request ids; the rest are stored as decisions first, all at once,
    then acquired one ``measure`` task each.
    """
    name, modality = spec.instrument.name, spec.structure_modality
    have: dict[int, Measurement] = {}
    for m in done:
        if m.modality == modality:
            have.setdefault(_nearest(candidates, m.library_x, m.library_y), m)
    decided: dict[int, Decision] = {}
    for d in stored_decisions(store):
        if d.modality == modality:
            decided.setdefault(_nearest(candidates, d.library_x, d.library_y), d)
    new = [Decision(instrument=name, modality=modality, library_x=float(x), library_y=float(y),
                    policy=SURVEY, n_candidates=len(candidates), campaign=spec.name,
                    flow_run_id=flow_run_id)
           for i, (x, y) in enumerate(candidates) if i not in have and i not in decided]
    store.append_decisions(new)
    for d in new:
        decided[_nearest(candidates, d.library_x, d.library_y)] = d
    client = instruments.clients[name]
    for i in range(len(candidates)):
        if i not in have:
            _, have[i] = measure(client, store, name, decision=decided[i], modality=modality,
                                 campaign=spec.name, flow_run_id=flow_run_id)
    images = np.stack([have[i].signal.array() for i in range(len(candidates))])
    return images, [have[i].measurement_id for i in range(len(candidates))]


def build_im2spec_policy(spec: Im2SpecSpec, instruments: Instruments, images: np.ndarray,
                         image_ids: list[str]) -> Im2SpecPolicy:
    """The DKL policy over the candidate grid, with the instrument's spectrum cost."""
    cfg = spec.instrument
    desc = instruments.descriptions[cfg.name]
    inst = InstrumentModel(cfg.name, (0,), desc.modality(cfg.modality).cost_s,
                           desc.move_cost_s_per_mm)
    return Im2SpecPolicy(candidate_grid(spec), library_extent(spec), [inst], structure=images,
                         structure_ids=image_ids, acquisition=spec.acquisition,
                         maximize=spec.maximize, refit_every=spec.refit_every,
                         n_initial=max(3, spec.seeds), feature_dim=spec.feature_dim,
                         steps=spec.dkl_steps, seed=spec.seed)


@flow(name="im2spec", log_prints=False)
def im2spec(spec: Im2SpecSpec) -> Im2SpecResult:
    """Run (or resume) the im2spec campaign ``spec`` until its spectrum budget is spent."""
    log = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    name, prop = spec.instrument.name, spec.property_modality
    with (Instruments.connect(spec) as instruments,
          instruments.open_store(spec, flow_run_id) as store):
        instruments.descriptions[name].modality(spec.structure_modality)  # fail early
        candidates = candidate_grid(spec)
        done = stored_measurements(store)
        images, image_ids = survey(spec, instruments, store, candidates, done, flow_run_id)
        policy = build_im2spec_policy(spec, instruments, images, image_ids)
        spectra = [m for m in done if m.modality == prop]
        policy.tell([_observation(spec, m) for m in spectra])
        have = {m.measurement_id for m in spectra}
        queue = []
        for d in stored_decisions(store):  # decided, not measured: re-issue, same request id
            if d.modality == prop and d.measurement_id not in have:
                policy.plan(name, np.array([d.library_x, d.library_y]), reason=d.policy,
                            measurement_id=d.measurement_id)
                queue.append(d)
        if not spectra and not queue:
            queue = seed_decisions(spec, policy, instruments, store, flow_run_id)
        log.info("im2spec %s: %d images, %d spectra in the store, %d decisions to finish",
                 spec.name, len(images), len(spectra), len(queue))
        client, n_done = instruments.clients[name], len(spectra)
        common = {"modality": prop, "campaign": spec.name, "flow_run_id": flow_run_id}
        while queue or n_done < spec.budget:
            if queue:
                _, m = measure(client, store, name, decision=queue.pop(0), **common)
            else:
                _, m = measure(client, store, name, policy=policy, **common)
            policy.tell([_observation(spec, m)])
            n_done += 1
        report = policy.report()
        log.info("im2spec %s finished: %d spectra, model %s", spec.name, n_done,
                 report["model_version"])
    return Im2SpecResult(store=spec.store, flow_run_id=flow_run_id, n_structure=len(images),
                         n_spectra=n_done, n_fits=policy.n_fits, policy=report)

