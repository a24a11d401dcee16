"""``coorch report``: the self-contained HTML report, from a real campaign store alone.

The store is written by the campaign runtime itself (``coorch.tasks.runtime.Campaign``, as the
efficiency simulation drives it: twins called in-process, background refits inline) onto a
local zarr store, with the metadata a flow writes, plus an operator's override and an
operator-only input; the page is then opened in headless Chromium, as a person would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from coorch.benchmarks.problems import twin_measure, twin_setup
from coorch.deployments.config import CampaignSpec, InstrumentConfig
from coorch.models.policies import make_policy
from coorch.records import Decision, HumanInput
from coorch.storage import CampaignStore
from coorch.tasks.background import InlineExecutor
from coorch.tasks.describe import Describer
from coorch.tasks.fit import HyperparameterRefit
from coorch.tasks.report import ground_truth
from coorch.tasks.report_html import write_report

INSTRUMENTS = (("afm", "pfm_loop"), ("raman", "raman"), ("wds", "wds"), ("stem", "stem_haadf"))


def spec(store: Path, policy: str, **kw) -> CampaignSpec:
    """The spec a flow would have stored (raman declared a VAE instrument: the report shows
    its latent-space stand-in)."""
    instruments = [
        InstrumentConfig(
            name=kind,
            kind=kind,
            modality=mod,
            url="http://127.0.0.1:1",
            token_file=store.parent / "agent.token",
            descriptor="vae" if kind == "raman" else "physics",
        )
        for kind, mod in INSTRUMENTS
    ]
    return CampaignSpec(name=f"test-{policy}", instruments=instruments, policy=policy, **kw)


def run_campaign(path: Path, policy: str = "coorchestrate", steps: int = 24, seed: int = 0):
    """A campaign through the runtime on four twins: seeds then ``steps`` decisions, each
    measured with the instrument's own cost on a simulated clock; returns (setup, spec)."""
    from coorch.tasks.runtime import Campaign

    setup = twin_setup("smbfo", seed=seed, instruments=INSTRUMENTS)
    problem = setup.problem
    agent = make_policy(policy, problem.candidates, problem.bounds, problem.instruments, seed=seed)
    refit = HyperparameterRefit(InlineExecutor(), every=8)
    campaign_spec = spec(path, policy)
    measure, clock = twin_measure(setup), time.time()  # a simulated clock from now
    store = CampaignStore.open(str(path), create=True)
    store.set_metadata(
        campaign=campaign_spec.name,
        spec=campaign_spec.model_dump(mode="json"),
        library="smbfo",
        sample="smbfo-001",
        instruments={k: t.describe().model_dump(mode="json") for k, t in setup.twins.items()},
    )
    budget = len(problem.seeds) + steps
    campaign = Campaign(
        campaign_spec.name, store, agent, Describer(), problem.modalities, budget, [refit]
    )
    campaign.reserve([(inst, problem.candidates[c]) for inst, c in problem.seeds])
    while (d := campaign.decide(None)) is not None:
        m, seconds = measure(d)
        m = m.model_copy(update={"started": clock, "ended": clock + seconds})
        clock += seconds + 2.0
        store.append_measurement(m)
        campaign.record(m)
    add_human_inputs(store, setup, clock)
    store.close()
    return setup, campaign_spec


def add_human_inputs(store: CampaignStore, setup, clock: float) -> None:
    """An operator overrides a proposal (the measurement is taken where they said), then votes
    on a spectrum (a row that asks for no measurement)."""
    proposal = Decision(
        instrument="afm", modality="pfm_loop", library_x=2.0, library_y=1.0, policy="coorchestrate"
    )
    override = Decision(
        instrument="afm",
        modality="pfm_loop",
        library_x=7.5,
        library_y=1.0,
        policy="override",
        created=clock,
        human_input=HumanInput(
            operator="alice",
            action="override",
            at=clock,
            detail={"x": [7.5, 1.0]},
            replaced=proposal.model_dump(mode="json"),
        ),
    )
    store.append_decision(override)
    m, seconds = twin_measure(setup)(override)
    store.append_measurement(m.model_copy(update={"started": clock, "ended": clock + seconds}))
    vote = Decision(
        instrument="",
        modality="",
        library_x=0.0,
        library_y=0.0,
        policy="vote",
        created=clock + 60,
        human_input=HumanInput(
            operator="bob", action="vote", at=clock + 60, detail={"score": 4, "comment": "nice"}
        ),
    )
    store.append_decision(vote)


@pytest.fixture(scope="module")
def campaign_store(tmp_path_factory) -> tuple[Path, object, CampaignSpec]:
    path = tmp_path_factory.mktemp("report") / "campaign.zarr"
    setup, campaign_spec = run_campaign(path)
    return path, setup, campaign_spec


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is not on PATH: the report test opens the page in headless Chromium; "
            "`make test` installs it (apt-get install -y chromium)"
        )
    return exe


def browse(page: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    return subprocess.run(
        [chromium(), *flags, *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_report_of_a_campaign_is_self_contained_and_renders(campaign_store, tmp_path):
    path, setup, campaign_spec = campaign_store
    extent = np.asarray(setup.problem.bounds)
    truth = ground_truth(setup.twins, setup.problem.modalities, extent, shape=(30, 3))
    t0 = time.perf_counter()
    out = write_report(str(path), tmp_path / "report.html", truth=truth)
    elapsed = time.perf_counter() - t0
    page = out.read_text()
    assert elapsed < 60, f"the report took {elapsed:.1f} s"  # ~3 s on 2 idle cores; CI is shared

    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)  # self-contained
    assert "<link" not in page and "<script src" not in page
    maps = re.findall(r'<img class="map" data-task="([^"]+)"', page)
    assert maps == [n for n, _ in INSTRUMENTS]  # one map per task, in spec order
    n_images = page.count("<img ")
    assert n_images == len(maps) + 3  # + curves, timeline, the VAE instrument's PCA
    assert "PCA" in page and "not the VAE" in page
    assert "error against the ground truth" in page or 'class="curve"' in page
    assert "alice" in page and "override" in page and "bob" in page and "vote" in page
    assert "(operator input)" in page  # the vote's row in the decisions table
    assert "afm at (2.00, 1.00) mm by coorchestrate" in page  # the proposal the override replaced
    assert campaign_spec.name in page and "coorchestrate" in page

    dom = browse(out, "--dump-dom").stdout
    plots = re.search(r'<body[^>]*data-plots="(\d+)"', dom)
    assert plots is not None, dom[:500]
    assert int(plots.group(1)) == n_images

    shot = tmp_path / "shot.png"
    browse(out, f"--screenshot={shot}", "--window-size=1200,1600")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.reshape(-1, pixels.shape[-1]).std(0).max() > 0.05  # not a blank page


def test_a_partial_pareto_store_reports_what_it_has(tmp_path):
    """Written during a run: a few measurements, one task still empty, one with a single value;
    a 'pareto' campaign shows its front from the GP where no position has every task."""
    full = tmp_path / "full.zarr"
    run_campaign(full, policy="random", steps=0)  # the 8 seeds only
    with CampaignStore.open(str(full), create=False) as src:
        ms = src.read_measurements()
        stem = [m for m in ms if m.instrument == "stem"][:1]
        wds, where = (
            [m for m in ms if m.instrument == "wds"],
            (stem[0].library_x, stem[0].library_y),
        )
        ms = [m for m in ms if m.instrument in ("afm", "raman")] + stem
        decisions = src.read_decisions()
    path = tmp_path / "partial.zarr"
    with CampaignStore.open(str(path), create=True) as store:
        pareto_spec = spec(path, "pareto", policy_options={"directions": [1, -1, 1, 1]})
        store.set_metadata(campaign="partial", spec=pareto_spec.model_dump(mode="json"))
        store.append_decisions(decisions)
        store.append_many(ms)
    page = write_report(str(path), tmp_path / "partial.html").read_text()
    assert len(re.findall(r'<img class="map"', page)) == 4
    assert "wds: 0 value(s): too few for a map" in page
    assert "stem: 1 value(s): too few for a map" in page
    assert "No front yet: wds has no values" in page
    assert "raman: 2 signal(s), too few for a PCA" in page

    # the run goes on: wds measures where stem did not, so no position has every task yet
    with CampaignStore.open(str(path), create=False) as store:
        store.append_measurement(next(m for m in wds if (m.library_x, m.library_y) != where))
    page = write_report(str(path), tmp_path / "partial.html").read_text()
    assert "GP posterior means at the measured positions" in page
    assert page.count('class="pareto"') == 1


def test_cli_writes_beside_the_store_and_refuses_a_missing_one(campaign_store, tmp_path):
    import typer

    from coorch.report_cli import report_command

    app = typer.Typer()
    app.command()(report_command)
    runner = CliRunner()
    missing = runner.invoke(app, [str(tmp_path / "nothing.zarr")])
    assert missing.exit_code == 2
    assert len(missing.output.strip().splitlines()) == 1 and "nothing.zarr" in missing.output

    path, _, _ = campaign_store
    copy = tmp_path / "run" / "campaign.zarr"
    shutil.copytree(path, copy)
    done = runner.invoke(app, [str(copy)])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "run" / "report.html").exists()
    assert str(tmp_path / "run" / "report.html") in done.output.replace("\n", "")
