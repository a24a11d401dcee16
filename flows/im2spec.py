"""The image -> spectrum (im2spec) flow: image everywhere, measure spectra where the model asks.

Story (Roccapriore, Ziatdinov et al. 2022): connect to one instrument (lease, sample), open the
store, take the cheap structure image at every candidate position (each stored with a
``survey`` decision), then spend the spectrum budget: a few seed spectra spread along the
library, after which a deep-kernel model of "structure patch -> spectral descriptor"
(:class:`coorch.models.dkl_policy.Im2SpecPolicy`) picks each next position where it is most
uncertain (or expects most improvement). Both stages run on the campaign runtime
(:class:`coorch.tasks.runtime.Campaign`) and the ``measure`` task, so every decision (model
version, training set including the images, acquisition value) is stored before the instrument
moves, and a crashed run resumes from the store without measuring twice.
No science here: it composes ``coorch.tasks``.
"""

from __future__ import annotations

import numpy as np
from prefect import flow, get_run_logger
from prefect.context import get_run_context
from pydantic import BaseModel

from coorch.deployments.im2spec_config import Im2SpecSpec
from coorch.tasks.im2spec import im2spec_agent, spectral_describer, structure_agent
from coorch.tasks.measure import measure, opaque
from coorch.tasks.runtime import Campaign
from coorch.tasks.setup import Instruments, geometry, seed_plan

SURVEY = "survey"  # the policy name on the structure images' decisions


class Im2SpecResult(BaseModel):
    """What an im2spec flow run returns."""

    store: str
    flow_run_id: str
    n_structure: int
    n_spectra: int
    n_fits: int
    policy: dict


def run_to_budget(campaign: Campaign, client, name: str) -> list:
    """Carry out the campaign's decisions for ``name`` one at a time until none is left."""
    out = []
    while (d := campaign.decide(name)) is not None:
        m = measure(*opaque(client, campaign.store, d))
        campaign.record(m)
        out.append(m)
    return out


@flow(name="im2spec", log_prints=False)
def im2spec(spec: Im2SpecSpec) -> Im2SpecResult:
    """Run (or resume) the im2spec campaign ``spec`` until its spectrum budget is spent."""
    log = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    name = spec.instrument.name
    with (
        Instruments.connect(spec) as instruments,
        instruments.open_store(spec, flow_run_id) as store,
    ):
        instruments.descriptions[name].modality(spec.structure_modality)  # fail early
        client, candidates = instruments.clients[name], geometry(spec).grid(spec.grid)
        # the survey: the structure image at every candidate not imaged or decided yet
        survey = Campaign(
            spec.name,
            store,
            structure_agent(spec, candidates),
            spectral_describer(spec),
            {name: spec.structure_modality},
            len(candidates),
            flow_run_id=flow_run_id,
            log=log,
        )
        images = {m.measurement_id: m for m in survey.resume()}
        todo = np.setdiff1d(
            np.arange(len(candidates)), list(set().union(*survey.agent.visited.values()))
        )
        survey.reserve([(name, candidates[i]) for i in todo], reason=SURVEY)
        images.update({m.measurement_id: m for m in run_to_budget(survey, client, name)})
        # the spectra, where the model of "image patch -> spectrum" is least sure
        agent = im2spec_agent(
            spec, instruments.descriptions[name], candidates, list(images.values())
        )
        campaign = Campaign(
            spec.name,
            store,
            agent,
            spectral_describer(spec),
            {name: spec.property_modality},
            spec.budget,
            flow_run_id=flow_run_id,
            log=log,
        )
        spectra = campaign.resume()
        if not spectra and not campaign.queue:
            campaign.reserve(seed_plan(spec))
        log.info(
            "im2spec %s: %d images, %d spectra in the store, %d decisions to finish",
            spec.name,
            len(candidates),
            len(spectra),
            len(campaign.queue),
        )
        run_to_budget(campaign, client, name)
        report = agent.report()
        log.info(
            "im2spec %s finished: %d spectra, model %s",
            spec.name,
            campaign.measured,
            report["model_version"],
        )
    return Im2SpecResult(
        store=spec.store,
        flow_run_id=flow_run_id,
        n_structure=len(candidates),
        n_spectra=campaign.measured,
        n_fits=agent.n_fits,
        policy=report,
    )
