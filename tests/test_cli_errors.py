"""`coorch run` and `coorch im2spec` on bad input: at most two lines naming the file and the
field, exit status 2, no traceback, found before Prefect is imported or its server contacted
(``PREFECT_API_URL`` points at a closed port: contacting it would fail with another message);
``coorch --debug`` shows the traceback; a campaign failing in its flow ends in one line too.

Real subprocesses (the installed ``coorch``, ``python -m coorch.cli``), as many at once as there
are CPUs: each pays a second or more of imports (pydantic, PyYAML, the spec's modules) before it
reads its spec. The other sub-commands are in ``test_cli_errors_subcommands.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from coorch.deployments.config import CampaignSpec


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _instrument(token_file: str = "agent.token", **over: object) -> dict:
    return {
        "name": "afm-twin",
        "kind": "afm",
        "modality": "pfm_loop",
        "url": f"http://127.0.0.1:{_closed_port()}",
        "token_file": token_file,
        **over,
    }


def _campaign(**over: object) -> dict:
    return {"name": "errs", "store": "runs/errs.zarr", "instruments": [_instrument()], **over}


def _im2spec(**over: object) -> dict:
    inst = _instrument(kind="stem", modality="eels")
    return {"name": "i2s", "store": "runs/i2s.zarr", "instrument": inst, **over}


# The three ways in: the installed script, the module (run as __main__: --debug must still
# reach im2spec, which imports coorch.cli), and the CLI in-process behind a hook that reports at
# exit whether Prefect was imported (the check of "before Prefect").
SCRIPT = [str(Path(sys.executable).with_name("coorch"))]
MODULE = [sys.executable, "-m", "coorch.cli"]
HOOKED = [
    sys.executable,
    "-c",
    "import atexit, sys\n"
    "atexit.register(lambda: print('prefect imported:', 'prefect' in sys.modules))\n"
    "from coorch.cli import app\n"
    "app(prog_name='coorch')\n",
]

#: name: (launcher, command line, spec file, its content, fragments stderr must hold). Run in a
#: folder holding agent.token and a-file (a file where a folder should be).
CASES: dict[str, tuple[list[str], list[str], str, dict | str, list[str]]] = {
    "run/not-yaml": (
        SCRIPT,
        ["run"],
        "a.yaml",
        "name: x\ninstruments: [a\n",
        ["a.yaml", "not YAML or JSON", "line 3"],
    ),
    "run/validation": (
        SCRIPT,
        ["run"],
        "v.yaml",
        _campaign(budget=-1, instruments=[_instrument(modality=None)]),
        ["v.yaml", "budget:", "instruments.0.modality:"],
    ),
    "run/unknown-key-json": (
        SCRIPT,
        ["run"],
        "u.json",
        json.dumps(_campaign(budjet=5)),
        ["u.json", "budjet: unknown key", "'budget'"],
    ),
    "run/instrument-token-missing": (
        HOOKED,
        ["run"],
        "t.yaml",
        _campaign(instruments=[_instrument("gone.token")]),
        ["t.yaml", "instruments.0.token_file", "gone.token"],
    ),
    "run/steering-token-missing": (
        SCRIPT,
        ["run"],
        "s.yaml",
        _campaign(steering={"mode": "review", "token_file": "steer.token"}),
        ["s.yaml", "steering.token_file", "steer.token"],
    ),
    "run/store-unwritable": (
        SCRIPT,
        ["run"],
        "w.yaml",
        _campaign(store="a-file/c.zarr"),
        ["w.yaml", "store:", "a-file is not a folder"],
    ),
    "im2spec/not-yaml": (MODULE, ["im2spec"], "ia.yaml", "{name: x\n", ["ia.yaml", "not YAML"]),
    "im2spec/validation": (
        MODULE,
        ["im2spec"],
        "iv.yaml",
        _im2spec(feature_dim=9, acquisition="greedy"),
        ["iv.yaml", "feature_dim:", "acquisition:"],
    ),
    "im2spec/unknown-key": (
        MODULE,
        ["im2spec"],
        "iu.yaml",
        {**_im2spec(), "instruments": []},
        ["iu.yaml", "instruments: unknown key", "'instrument'"],
    ),
    "im2spec/token-missing": (
        HOOKED,
        ["im2spec"],
        "it.yaml",
        _im2spec(instrument=_instrument("gone.token", kind="stem", modality="eels")),
        ["it.yaml", "instrument.token_file", "gone.token"],
    ),
    "im2spec/store-unwritable": (
        MODULE,
        ["im2spec"],
        "iw.yaml",
        _im2spec(store="a-file/i.zarr"),
        ["iw.yaml", "store:", "a-file is not a folder"],
    ),
}
#: name: (launcher, command line, fragment): bad specs above with --debug: their traceback.
DEBUG = {
    "run/debug": (SCRIPT, ["--debug", "run", "v.yaml"], "budget"),
    "im2spec/debug": (MODULE, ["--debug", "im2spec", "iu.yaml"], "instruments"),
}


def _env(d: Path) -> dict[str, str]:
    """The test's environment, with Prefect's API on a closed port and no facility."""
    env = {k: v for k, v in os.environ.items() if k != "COORCH_DEBUG"}
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{_closed_port()}/api"
    env["COORCH_FACILITY"] = str(d / "no-facility")
    return env


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every case's command line run in one folder, as many at once as there are CPUs."""
    d = tmp_path_factory.mktemp("cli-errors")
    (d / "agent.token").write_text("secret\n")
    (d / "a-file").write_text("not a folder\n")
    argvs = {}
    for name, (launcher, args, spec, content, _) in CASES.items():
        (d / spec).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        argvs[name] = [*launcher, *args, spec]
    argvs |= {name: [*launcher, *args] for name, (launcher, args, _) in DEBUG.items()}
    if os.geteuid() != 0:  # root writes into a read-only folder: no case there
        (d / "ro").mkdir(mode=0o555)
        (d / "ro.yaml").write_text(yaml.safe_dump(_campaign(store="ro/c.zarr")))
        argvs["read-only"] = [*SCRIPT, "run", "ro.yaml"]

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=d, env=_env(d), capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return dict(zip(argvs, pool.map(run, argvs.values()), strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_two_lines_naming_it_and_status_2(ran, name):
    launcher, args, _, _, fragments = CASES[name]
    res = ran[name]
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert 1 <= len(lines) <= 2, res.stderr
    assert all(line.startswith(f"coorch {args[0]}: ") for line in lines), res.stderr
    assert "Traceback" not in res.stderr
    assert "Failed to reach API" not in res.stderr  # the closed PREFECT_API_URL never tried
    for fragment in fragments:
        assert fragment in res.stderr, (fragment, res.stderr)
    if launcher is HOOKED:
        assert "prefect imported: False" in res.stdout


@pytest.mark.parametrize("name", list(DEBUG))
def test_debug_shows_the_traceback(ran, name):
    res, fragment = ran[name], DEBUG[name][2]
    assert res.returncode != 0
    assert "Traceback" in res.stderr and fragment in res.stderr, res.stderr


def test_a_read_only_store_folder_is_refused_too(ran):
    if "read-only" not in ran:
        pytest.skip("root writes into a read-only folder")
    res = ran["read-only"]
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) <= 2, res.stderr
    assert "store:" in res.stderr and "ro/c.zarr" in res.stderr


def test_what_the_helpers_say_in_process(tmp_path):
    """The cases not worth a process each: a spec that is not a mapping, an empty one, errors
    past the second counted, a whole-spec rule, an empty token, a missing spec file."""
    from coorch.cli import check_local_files, error_lines, load_spec

    def said(content: str | None, **tokens: Path) -> list[str]:
        path = tmp_path / "spec.yaml"
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_text(content)
        try:
            check_local_files(path, tokens, str(tmp_path / "s.zarr"))
            load_spec(path, CampaignSpec)
        except (ValueError, OSError) as exc:
            return error_lines(exc)
        return []

    assert said("- 1\n") == [
        f"{tmp_path / 'spec.yaml'}: a CampaignSpec is a mapping of fields, this is a list"
    ]
    assert "this is empty" in said("")[0]
    many = said(yaml.safe_dump({"budget": 0, "grid": "x", "seed": "y", "dask": 1}))
    assert len(many) == 2 and "(and 3 more: " in many[1], many
    twice = said(yaml.safe_dump(_campaign(instruments=[_instrument(), _instrument()])))
    assert twice[0].endswith("instrument names must be unique, got ['afm-twin', 'afm-twin']")
    (tmp_path / "empty.token").write_text(" \n")
    empty = said(None, **{"instruments.0.token_file": tmp_path / "empty.token"})
    assert "instruments.0.token_file" in empty[0] and "is empty" in empty[0]
    assert said(None) == [f"{tmp_path / 'spec.yaml'}: No such file or directory"]


def test_specs_written_by_older_code_still_load():
    """Unknown keys are refused, so a stored spec (store metadata, flow parameters) must only
    ever lack fields: the walking skeleton's spec, every field it had, still validates."""
    old = {
        "name": "demo",
        "library": "smbfo",
        "sample": "smbfo-001",
        "instruments": [_instrument(descriptor="physics")],
        "policy": "coorchestrate",
        "budget": 30,
        "seeds_per_instrument": 3,
        "extent": None,
        "grid": [41, 5],
        "refit_every": 4,
        "store": "runs/demo/campaign.zarr",
        "seed": 0,
        "dask": {"address": None, "n_workers": 1, "threads_per_worker": 1, "jobqueue": None},
    }
    spec = CampaignSpec(**old)
    assert spec.steering.mode == "off" and spec.report is None
    assert CampaignSpec(**spec.model_dump(mode="json")) == spec  # what the store holds


def test_report_reads_a_store_whose_spec_this_code_cannot(tmp_path):
    """A spec from newer code (a key unknown here) leaves the report to the records."""
    from coorch.storage import CampaignStore
    from coorch.tasks.report_data import read_campaign

    for extra, expect in [({}, "afm-twin"), ({"from_the_future": 1}, None)]:
        url = str(tmp_path / f"s{len(extra)}.zarr")
        with CampaignStore.open(url) as store:
            store.set_metadata(spec=_campaign(**extra))
            view = read_campaign(store)
        assert (view.spec.instruments[0].name if view.spec else None) == expect


@pytest.mark.slow
def test_a_failing_flow_ends_in_one_line_and_status_1(prefect_server, tmp_path):
    """An agent refusing connections fails the flow: one line and a hint, no traceback."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "agent.token").write_text("secret\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_campaign()))
    env = {**_env(tmp_path), "PREFECT_API_URL": PREFECT_API_URL.value()}
    res = subprocess.run(
        [*SCRIPT, "run", "c.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    ours = [line for line in res.stderr.splitlines() if line.startswith("coorch run: ")]
    assert res.returncode == 1, res.stderr
    assert len(ours) == 2 and "campaign 'errs' failed" in ours[0], res.stderr
    assert "Connection refused" in ours[0] or "InstrumentUnavailable" in ours[0]
    assert "Traceback" not in res.stderr
