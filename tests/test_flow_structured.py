"""The structured GP switched on per task: a real flow run locates the smbfo phase boundary.

The PFM loop opening on the smbfo twin falls to zero across the morphotropic phase boundary (the
polar phase and its coercive field vanish past it), so its physics mean is a ``step``; the
boundary sits at Sm 13.5 %, x = 6.75 mm on the library.
"""

from __future__ import annotations

import typing

import numpy as np
import pytest
from pydantic import ValidationError

from coorch.deployments.config import CampaignSpec, InstrumentConfig
from coorch.deployments.dask_config import SCHEDULER_HTTP
from coorch.instrument_agents.launch import start_twin
from coorch.instrument_agents.libraries import get_library
from coorch.instrument_agents.twins import make_twin
from coorch.models.cost import InstrumentCost
from coorch.models.descriptors import describe
from coorch.models.observations import Observation
from coorch.models.policies import make_policy
from coorch.models.structured import MeanKind
from coorch.records import Measurement
from coorch.storage import CampaignStore
from coorch.tasks.describe import Describer
from coorch.tasks.physics import MIN_VALUES, PhysicsFits
from coorch.tasks.runtime import Campaign

TOKEN = "structured-test-token"
SMBFO = get_library("smbfo")
BOUNDARY_MM = SMBFO.s_boundary / SMBFO.s_max * (SMBFO.extent[0][1] - SMBFO.extent[0][0])
TOLERANCE_MM = 0.5  # one Sm percent; candidate positions are 0.5 mm apart along x


@pytest.fixture(scope="module")
def afm(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("tokens") / "agent.token"
    token_file.write_text(TOKEN)
    agent = start_twin("afm", token=TOKEN, seed=1)
    yield InstrumentConfig(
        name=agent.driver.describe().id,
        kind="afm",
        modality="pfm_loop",
        url=agent.url,
        token_file=token_file,
        physics_mean="step",
    )
    agent.stop()


def test_flow_fits_the_physics_mean_and_reports_the_boundary(prefect_server, afm, tmp_path):
    from coorch.flows.coorchestrate import coorchestrate

    # the instant twin measures faster than a refit lands: waiting for each refit makes the
    # design the one an instrument's pace gives (as in the benchmarks), not one that depends
    # on the machine's load. Spec seeds 0-3 put the centre 0.15-0.19 mm past the boundary
    # (the loop opening halves just after the polar fraction does)
    spec = CampaignSpec(
        name="s",
        instruments=[afm],
        budget=16,
        seeds_per_instrument=3,
        grid=(21, 3),
        refit_every=3,
        wait_for_refits=True,
        store=str(tmp_path / "s.zarr"),
    )
    result = coorchestrate(spec)
    assert result.n_measurements == 16
    params = result.physics[afm.name]
    assert set(params) == {"center", "center_lo", "center_hi", "width", "amplitude", "offset"}
    assert abs(params["center"] - BOUNDARY_MM) < TOLERANCE_MM
    # the 90 % interval holds the centre and lies within the tolerance: the measurements on
    # both sides of the step pinned it (it need not hold the twin's nominal boundary, since
    # the loop opening halves a little past it)
    lo, hi = params["center_lo"], params["center_hi"]
    assert BOUNDARY_MM - TOLERANCE_MM < lo <= params["center"] <= hi < BOUNDARY_MM + TOLERANCE_MM
    assert params["amplitude"] < 0  # the loop closes past the boundary


def _measured(n: int, seed: int) -> list[Measurement]:
    """``n`` PFM loops of the smbfo twin spread along x, at random y (driver calls, no HTTP)."""
    twin = make_twin("afm", seed=seed)
    twin.load_sample("s")
    rng = np.random.default_rng(seed)
    xs = np.linspace(0.25, 9.75, n) + rng.uniform(-0.2, 0.2, n)
    out = []
    for i, (x, y) in enumerate(zip(xs, rng.uniform(0, 2, n), strict=True)):
        twin.move(*twin.frame.to_stage(x, y))
        out.append(
            Measurement(
                measurement_id=f"m{i}",
                instrument="afm",
                modality="pfm_loop",
                sample="s",
                library_x=x,
                library_y=y,
                stage_x=0.0,
                stage_y=0.0,
                started=i,
                ended=i + 0.5,
                signal=twin.measure("pfm_loop", {}),
            )
        )
    return out


def _campaign(tmp_path, policy: str = "random", candidates=np.zeros((1, 2))) -> Campaign:
    """A campaign around one AFM, for background work to read and write."""
    extent = np.asarray(SMBFO.extent, float)
    agent = make_policy(policy, candidates, extent, [InstrumentCost("afm", (0,))])
    return Campaign(
        "physics",
        CampaignStore.open(str(tmp_path / "c.zarr")),
        agent,
        Describer(),
        {"afm": "pfm_loop"},
        budget=100,
    )


def test_without_dask_the_fit_runs_once_at_finish_and_the_report_draws_it(tmp_path):
    """Random and grid policies start no Dask cluster: the campaign still gets its answer."""
    from coorch.models.mtgp import fit_hyperparameters
    from coorch.tasks.report import ground_truth, plot_report, training_arrays

    campaign = _campaign(tmp_path)
    policy = campaign.agent
    physics = PhysicsFits(None, {"afm": "step"}, every=3)
    ms = _measured(20, seed=0)  # centre within 0.35 mm of the boundary for seeds 0-7
    policy.tell(
        [
            Observation(
                "afm",
                np.array([m.library_x, m.library_y]),
                describe("pfm_loop", m.signal),
                m.measurement_id,
            )
            for m in ms
        ]
    )
    physics.poll(campaign)
    assert physics.fits == 0 and not physics.models  # no executor: nothing in the background
    physics.finish(campaign)
    assert physics.fits == 1
    params = physics.physics()["afm"]
    assert abs(params["center"] - BOUNDARY_MM) < TOLERANCE_MM, params
    assert physics.summary()[0].startswith("afm: phase boundary at c0=")

    extent = policy.bounds
    truth = ground_truth({"afm": make_twin("afm")}, {"afm": "pfm_loop"}, extent, shape=(20, 1))
    hyper = fit_hyperparameters(*training_arrays(ms, truth.tasks, extent), 1, max_iter=5)
    curve = {"random": (np.array([20]), np.ones((1, 1)))}  # the error panel needs a line
    png = plot_report(
        tmp_path / "r.png", {"random": ms}, curve, truth, extent, hyper, physics=physics.models
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_on_dask_one_fit_in_flight_then_a_final_fit_on_every_value(tmp_path):
    from distributed import Client

    campaign = _campaign(tmp_path, "coorchestrate", np.array([[1.0, 1.0], [9.0, 1.0]]))
    policy = campaign.agent
    obs = [
        Observation(
            "afm",
            np.array([m.library_x, m.library_y]),
            describe("pfm_loop", m.signal),
            m.measurement_id,
        )
        for m in _measured(16, seed=2)
    ]
    with Client(
        processes=False,
        n_workers=1,
        threads_per_worker=1,
        scheduler_kwargs=SCHEDULER_HTTP,
    ) as client:
        physics = PhysicsFits(client.get_executor(pure=False), {"afm": "step"}, every=3)
        for o in obs:
            policy.tell([o])
            physics.poll(campaign)
            assert len(physics.running) <= 1
        assert physics.last_n["afm"] >= MIN_VALUES  # a background fit was started
        physics.finish(campaign)
    assert not physics.running
    assert physics.fits >= 2  # the background fit(s) and the final one
    assert len(physics.models["afm"].y) == 16  # the answer uses every value
    assert abs(physics.physics()["afm"]["center"] - BOUNDARY_MM) < TOLERANCE_MM


def test_too_few_values_give_no_physics_but_no_error(tmp_path):
    campaign = _campaign(tmp_path)
    physics = PhysicsFits(None, {"afm": "peak"}, every=3)
    campaign.agent.tell(
        [Observation("afm", np.array([x, 1.0]), np.array([1.0]), f"m{x}") for x in (2.0, 5.0)]
    )
    physics.finish(campaign)
    assert physics.physics() == {} and physics.fits == 0


def test_config_kinds_are_the_models_kinds():
    field = InstrumentConfig.model_fields["physics_mean"].annotation
    assert set(typing.get_args(typing.get_args(field)[0])) == set(typing.get_args(MeanKind))


def test_physics_mean_needs_the_physics_descriptor(tmp_path):
    common = {
        "name": "afm-1",
        "kind": "afm",
        "modality": "pfm_loop",
        "url": "http://x",
        "token_file": tmp_path / "t",
    }
    assert InstrumentConfig(**common).physics_mean is None
    assert InstrumentConfig(**common, physics_mean="peak").physics_mean == "peak"
    with pytest.raises(ValidationError, match="needs descriptor='physics'"):
        InstrumentConfig(**common, descriptor="vae", physics_mean="step")
    with pytest.raises(ValidationError):
        InstrumentConfig(**common, physics_mean="gaussian")
