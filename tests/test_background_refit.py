"""Background refits on a real Dask LocalCluster: a failed fit never ends the campaign."""

from __future__ import annotations

import numpy as np

from coorch.deployments.config import DaskConfig
from coorch.deployments.dask_cluster import dask_client
from coorch.models.policies import InstrumentModel, Observation, make_policy
from coorch.tasks.fit import BackgroundRefit


def _policy():
    cand = np.linspace(0, 1, 21)[:, None]
    insts = [InstrumentModel("a", (0,), cost_s=1.0), InstrumentModel("b", (1,), cost_s=1.0)]
    pol = make_policy("coorchestrate", cand, np.array([[0.0, 1.0]]), insts)
    rng = np.random.default_rng(0)
    for i, x in enumerate(rng.random(12)):
        name = "ab"[i % 2]
        pol.tell([Observation(name, np.array([x]), np.array([np.sin(4 * x)]), f"m{i}")])
    return pol


def test_a_failing_refit_is_logged_and_the_policy_keeps_its_model(caplog):
    def singular(*args, **kwargs):
        raise RuntimeError("Matrix not positive definite after repeatedly adding jitter")

    class Failing(BackgroundRefit):
        fit_fn = staticmethod(singular)

    policy = _policy()
    before = policy.model_version
    with dask_client(DaskConfig()) as client:
        refit = Failing(client, policy, every=1)
        refit.submit()
        refit.finish()  # waits for a last fit: it fails too
        assert refit.failed >= 1 and refit.fits == 0
        assert policy.model_version == before
        assert policy.ask("a").instrument == "a"  # still deciding
    assert "refit on" in caplog.text and "failed" in caplog.text


def test_a_refit_that_succeeds_is_swapped_in():
    policy = _policy()
    before = policy.model_version
    with dask_client(DaskConfig()) as client:
        refit = BackgroundRefit(client, policy, every=1)
        refit.finish()
        assert refit.fits == 1 and refit.failed == 0
    assert policy.model_version != before
