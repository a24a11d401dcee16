"""Campaign configuration: the deployment's parameters validate, bad input fails clearly."""

import pytest
import yaml
from pydantic import ValidationError

from coorch.deployments.config import CampaignSpec


def test_prefect_yaml_parameters_are_a_valid_campaign_spec():
    with open("prefect.yaml") as f:
        deployments = yaml.safe_load(f)["deployments"]
    spec = CampaignSpec(**deployments[0]["parameters"]["spec"])
    assert [i.modality for i in spec.instruments] == ["pfm_loop", "raman"]


def test_unknown_policy_and_duplicate_instruments_are_refused():
    inst = {
        "name": "a",
        "kind": "afm",
        "modality": "pfm_loop",
        "url": "http://x",
        "token_file": "t",
    }
    with pytest.raises(ValidationError, match="unknown policy"):
        CampaignSpec(instruments=[inst], policy="clairvoyant")
    with pytest.raises(ValidationError, match="unique"):
        CampaignSpec(instruments=[inst, inst])


def test_config_knows_exactly_the_policies_make_policy_builds():
    from coorch.deployments import config
    from coorch.models import policies

    assert config.POLICIES == policies.POLICIES


def test_policy_options_reach_the_policy_and_bad_ones_are_named():
    from coorch.instrument_agents.twins import make_twin
    from coorch.tasks.setup import build_agent

    twin = make_twin("raman", "smbfo")
    inst = {
        "name": "raman-twin",
        "kind": "raman",
        "modality": "raman",
        "url": "http://127.0.0.1:1",
        "token_file": "tok",
    }
    descriptions = {"raman-twin": twin.describe()}
    spec = CampaignSpec(
        instruments=[inst],
        policy="coorchestrate",
        policy_options={"min_fit_values": 3, "max_correlation": 0.5},
    )
    agent = build_agent(spec, descriptions)
    assert agent.decision.min_fit_values == 3 and agent.decision.max_correlation == 0.5
    bad = spec.model_copy(update={"policy_options": {"directoins": [1]}})
    with pytest.raises(ValueError, match="directoins"):
        build_agent(bad, descriptions)


#: A WDS twin's campaign entry (its agent is never reached: only the config is checked).
WDS = {
    "name": "wds-twin",
    "kind": "wds",
    "modality": "wds",
    "url": "http://127.0.0.1:1",
    "token_file": "tok",
    "log_scale": True,
}


def _agent(**inst):
    """The co-orchestration agent of a one-instrument alscbn campaign with ``WDS | inst``."""
    from coorch.instrument_agents.twins import make_twin
    from coorch.tasks.setup import build_agent

    spec = CampaignSpec(library="alscbn", instruments=[{**WDS, **inst}], policy="coorchestrate")
    return build_agent(spec, {"wds-twin": make_twin("wds", "alscbn").describe()})


def test_log_scale_reaches_the_policy_and_is_refused_for_vae_latents():
    assert _agent().log_tasks.tolist() == [True]
    with pytest.raises(ValidationError, match="log_scale needs descriptor='physics'"):
        CampaignSpec(instruments=[{**WDS, "descriptor": "vae"}])


def test_repeatability_reaches_the_fits_and_is_refused_where_it_means_nothing():
    """A declared repeatability travels to the agent's fits (``noise_sd``); a VAE latent's,
    a zero, a negative or a NaN one is refused with the field named."""
    assert _agent(repeatability=0.05).noise_sd.tolist() == [0.05]
    assert _agent().noise_sd is None
    with pytest.raises(ValidationError, match="repeatability needs descriptor='physics'"):
        CampaignSpec(
            instruments=[{**WDS, "log_scale": False, "descriptor": "vae", "repeatability": 0.05}]
        )
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValidationError, match="repeatability"):
            CampaignSpec(instruments=[{**WDS, "repeatability": bad}])


def test_prefect_yaml_deploys_every_flow_with_valid_parameters():
    """One deployment per flow in flows/, its entrypoint importable and its example parameters
    accepted by the flow's spec."""
    import importlib
    from pathlib import Path

    import yaml

    from coorch.deployments.im2spec_config import Im2SpecSpec
    from coorch.deployments.theory_config import ConavigateSpec

    root = Path(__file__).resolve().parents[1]
    deployments = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    specs = {"coorchestrate": CampaignSpec, "im2spec": Im2SpecSpec, "conavigate": ConavigateSpec}
    helpers = {"__init__", "progress", "steering", "steer_client", "artifacts"}  # not flows
    flows = {p.stem for p in (root / "flows").glob("*.py")} - helpers
    # module paths: a worker runs them from the installed package, wherever it was started
    assert {d["entrypoint"] for d in deployments} == {f"coorch.flows.{f}.{f}" for f in flows}
    for d in deployments:
        module, name = d["entrypoint"].rsplit(".", 1)
        flow = getattr(importlib.import_module(module), name)
        assert flow.name == d["name"]
        specs[d["name"]](**d["parameters"]["spec"])


@pytest.mark.parametrize(
    ("instrument", "theory", "fragment"),
    [
        ({}, {"instrument": "nope"}, "none of the campaign's instruments"),
        ({}, {"instrument": "afm", "composition_range": [0.2, 0.1]}, "no fraction range"),
        ({"log_scale": True}, {"instrument": "afm"}, "on a log scale"),
        ({"modality": "raman", "kind": "raman"}, {"instrument": "afm"}, "measures 'raman'"),
        ({}, {"instrument": "afm", "initial_simulations": 20, "max_simulations": 10}, "below"),
        ({}, {"instrument": "afm", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_a_conavigation_spec_refuses_a_theory_it_cannot_run(instrument, theory, fragment):
    from coorch.deployments.theory_config import ConavigateSpec

    inst = {"name": "afm", "kind": "afm", "modality": "pfm_loop", "url": "http://x",
            "token_file": "t", **instrument}  # fmt: skip
    with pytest.raises(ValidationError, match=fragment):
        ConavigateSpec(library="smbfo-lgd", instruments=[inst], theory=theory)
