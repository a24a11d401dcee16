"""Background refits on a real Dask LocalCluster: a failed fit never ends the campaign, a
successful one is built on a thread and installed, and a relabelling (a VAE retrained) makes
the next poll refit even without new values. A campaign that waits for its background work
decides only once the refit and the VAE training due have landed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from coorch.deployments.config import DaskConfig
from coorch.deployments.dask_cluster import dask_client
from coorch.models.cost import InstrumentCost
from coorch.models.observations import Observation
from coorch.models.policies import make_policy
from coorch.storage import CampaignStore
from coorch.tasks.background import InlineExecutor
from coorch.tasks.describe import Describer
from coorch.tasks.fit import HyperparameterRefit, VAETraining
from coorch.tasks.runtime import Campaign


@pytest.fixture
def campaign(tmp_path) -> Campaign:
    cand = np.linspace(0, 1, 21)[:, None]
    insts = [InstrumentCost("a", (0,), cost_s=1.0), InstrumentCost("b", (1,), cost_s=1.0)]
    agent = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), insts)
    rng = np.random.default_rng(0)
    for i, x in enumerate(rng.random(12)):
        name = "ab"[i % 2]
        agent.tell([Observation(name, np.array([x]), np.array([np.sin(4 * x)]), f"m{i}")])
    store = CampaignStore.open(str(tmp_path / "c.zarr"))
    return Campaign("refit", store, agent, Describer(), {"a": "raman", "b": "wds"}, budget=20)


def test_a_failing_refit_is_logged_and_the_agent_keeps_its_model(campaign, caplog):
    def singular(*args, **kwargs):
        raise RuntimeError("Matrix not positive definite after repeatedly adding jitter")

    before = campaign.agent.model_version
    with dask_client(DaskConfig()) as client:
        refit = HyperparameterRefit(client.get_executor(pure=False), every=1, fit=singular)
        refit.poll(campaign)
        refit.finish(campaign)  # waits for a last fit: it fails too
        assert refit.failed >= 1 and refit.fits == 0
        assert campaign.agent.model_version == before
        assert campaign.agent.ask("a").instrument == "a"  # still deciding
    assert "refit on" in caplog.text and "failed" in caplog.text


def test_a_refit_that_succeeds_is_built_on_a_thread_and_installed(campaign):
    before = campaign.agent.model_version
    with dask_client(DaskConfig()) as client, ThreadPoolExecutor(1) as builder:
        refit = HyperparameterRefit(client.get_executor(pure=False), every=1, builder=builder)
        refit.poll(campaign)
        assert refit.fitting is not None  # in flight: the poll did not wait for it
        refit.finish(campaign)
        assert refit.fits == 1 and refit.failed == 0
    assert campaign.agent.model_version != before


def test_a_campaign_that_waits_for_refits_decides_on_the_fit_of_every_value(campaign):
    before = campaign.agent.model_version
    with dask_client(DaskConfig()) as client, ThreadPoolExecutor(1) as builder:
        refit = HyperparameterRefit(
            client.get_executor(pure=False), every=1, builder=builder, wait=True
        )
        refit.poll(campaign)
        # installed before the poll returned: the next decision uses it
        assert refit.fitting is None and refit.building is None
        assert refit.fits == 1 and campaign.agent.model_version != before
        assert refit.latest is not None and refit.latest[0] == (12, campaign.agent.log.revision)


def test_relabelled_values_are_refitted_without_new_values(campaign):
    calls = []

    def fit(x, t, y, num_tasks, **kw):
        calls.append(y.copy())
        return campaign.agent.model.post.hyper

    refit = HyperparameterRefit(InlineExecutor(), every=100, fit=fit)
    refit.poll(campaign)
    refit.poll(campaign)
    assert len(calls) == 1  # the first poll fits; nothing new since
    campaign.agent.relabel({"m0": np.array([5.0])})
    refit.poll(campaign)
    assert len(calls) == 2 and 5.0 in calls[1]


@pytest.mark.parametrize("wait", [False, True])
def test_a_campaign_that_waits_relabels_with_the_vae_due_before_it_decides(tmp_path, wait):
    """Six spectra of a VAE instrument, told as NaN until a VAE encodes them: waiting, the poll
    returns with the VAE trained and the values relabelled; not waiting, it returns at once
    with the training in flight (the agent decides on the NaN-valued log meanwhile)."""
    cand = np.linspace(0, 1, 21)[:, None]
    agent = make_policy(
        "coorchestrate", cand, np.array([[0.0, 1.0]]), [InstrumentCost("b", (0, 1), cost_s=1.0)]
    )
    describer = Describer(vae_latents={"b": 2})
    rng = np.random.default_rng(0)
    for i, x in enumerate(np.linspace(0.05, 0.95, 6)):
        describer.signals["b"][f"m{i}"] = np.sin(np.linspace(0, 6, 64) * (1 + x))
        describer.signals["b"][f"m{i}"] += 0.01 * rng.standard_normal(64)
        agent.tell([Observation("b", np.array([x]), np.full(2, np.nan), f"m{i}")])
    store = CampaignStore.open(str(tmp_path / "c.zarr"))
    campaign = Campaign("vae", store, agent, describer, {"b": "raman"}, budget=20)
    with dask_client(DaskConfig()) as client:
        training = VAETraining(client.get_executor(pure=False), epochs=5, wait=wait)
        training.poll(campaign)
        if wait:
            assert training.running == {} and training.trainings == 1
            assert agent.log.counts().tolist() == [6, 6]  # relabelled before any decision
        else:
            assert set(training.running) == {"b"} and training.trainings == 0
            assert agent.log.counts().tolist() == [0, 0]  # still NaN
        training.finish(campaign)
    assert "b" in describer.vae and agent.log.counts().tolist() == [6, 6]
