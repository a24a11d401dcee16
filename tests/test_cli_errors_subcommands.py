"""Every ``coorch`` sub-command on bad input: at most two ``coorch CMD: ...`` lines naming the
bad field or file, exit status 2, no traceback; ``coorch --debug`` shows the traceback.

``coorch run`` and ``coorch im2spec`` are in ``test_cli_errors.py``; here are ``store``,
``report``, ``steer``, ``up``/``down``, ``demo`` and ``bench``. Most cases run the real
command tree in-process (typer's ``CliRunner`` on ``coorch.cli.app``): milliseconds each. The
cases where a fresh process matters (a command that would start a Prefect server, a facility's
supervisor or twins: the error must come before any of it, so Prefect is never even imported;
``--debug`` printing a real traceback) run the installed ``coorch`` as subprocesses, all at
once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from coorch.benchmarks import fixtures as syn
from coorch.cli import app
from coorch.storage import CampaignStore


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder of things to get wrong: a real campaign store, a zarr store that is not one, a
    file where a folder belongs, token files (good, empty, binary), facility folders (none up,
    an unreadable facility.json), facility configs (not YAML, a misspelt key)."""
    import zarr

    d = tmp_path_factory.mktemp("bad-input")
    with CampaignStore.open(str(d / "c.zarr")) as store:
        store.append_measurement(syn.measurement(0))
    zarr.open_group(str(d / "plain.zarr"), mode="w").create_array("a", shape=(2,), dtype="f8")
    (d / "a-file").write_text("not a folder\n")
    (d / "steer.token").write_text("secret\n")
    (d / "empty.token").write_text("\n")
    (d / "binary.token").write_bytes(b"\xff\xfe\x00")
    (d / "no-facility").mkdir()
    (d / "broken-facility").mkdir()
    (d / "broken-facility" / "facility.json").write_text("{not json")
    (d / "bad.yaml").write_text("instruments: [afm\n")
    (d / "misspelt.yaml").write_text(yaml.safe_dump({"budjet": 10}))
    return d


@pytest.fixture
def coorch(world, monkeypatch):
    """``coorch ARGS`` in-process, in ``world``, Prefect's API on a closed port, no facility."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{_closed_port()}/api"
    monkeypatch.chdir(world)
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("COORCH_FACILITY", str(world / "no-facility"))
    monkeypatch.delenv("COORCH_DEBUG", raising=False)
    monkeypatch.delenv("COORCH_STEER_TOKEN_FILE", raising=False)

    def invoke(*args: str):
        return CliRunner().invoke(app, list(args), prog_name="coorch")

    # the session's Prefect test harness, once started, overrides the environment in-process
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield invoke


def assert_short(res, command: str, *fragments: str) -> None:
    """Status 2, one or two ``coorch COMMAND: ...`` lines on stderr holding ``fragments``."""
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.stderr, res.exception)
    assert 1 <= len(lines) <= 2, res.stderr
    assert all(line.startswith(f"coorch {command}: ") for line in lines), res.stderr
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in res.stderr, (fragment, res.stderr)


#: name: (command line, the command as it names itself, fragments stderr must hold).
CASES: dict[str, tuple[list[str], str, list[str]]] = {
    # coorch store
    "store/ls-missing": (["store", "ls", "gone.zarr"], "store ls", ["no campaign store", "gone"]),
    "store/ls-not-a-store": (
        ["store", "ls", "plain.zarr"],
        "store ls",
        ["plain.zarr is not a campaign store"],
    ),
    "store/show-a-file": (["store", "show", "a-file"], "store show", ["no campaign store"]),
    "store/show-no-modality": (
        ["store", "show", "c.zarr", "--modality", "raman"],
        "store show",
        ["--modality", "no modality 'raman'", "pfm_loop"],
    ),
    "store/lineage-unknown-id": (
        ["store", "lineage", "c.zarr", "m-nope"],
        "store lineage",
        ["m-nope"],
    ),
    "store/verify-missing": (["store", "verify", "gone.zarr"], "store verify", ["gone.zarr"]),
    "store/bad-option": (
        ["store", "ls", "c.zarr", "-o", "s3cr3t"],
        "store ls",
        ["'--option'", "key=value"],
    ),
    "store/export-bad-format": (
        ["store", "export", "c.zarr", "--to", "csv"],
        "store export",
        ["'--to'", "'csv'"],
    ),
    "store/export-unwritable": (
        ["store", "export", "c.zarr", "--out", "a-file/c.nc"],
        "store export",
        ["--out", "a-file is not a folder"],
    ),
    "store/export-parquet-onto-a-file": (
        ["store", "export", "c.zarr", "--to", "parquet", "--out", "a-file"],
        "store export",
        ["--out", "a-file is not a folder"],
    ),
    # coorch report
    "report/missing": (["report", "gone.zarr"], "report", ["no campaign store", "gone.zarr"]),
    "report/not-a-store": (["report", "plain.zarr"], "report", ["is not a campaign store"]),
    "report/url-kept-whole": (
        ["report", "memory://nowhere/c.zarr"],
        "report",
        ["no campaign store at memory://nowhere/c.zarr"],
    ),
    "report/out-unwritable": (
        ["report", "c.zarr", "--out", "a-file/r.html"],
        "report",
        ["--out", "a-file is not a folder"],
    ),
    "report/out-is-a-folder": (
        ["report", "c.zarr", "--out", "c.zarr"],
        "report",
        ["--out", "is a folder"],
    ),
    # coorch steer (the server is on a closed port: reaching it would fail otherwise)
    "steer/token-missing": (
        ["steer", "accept", "run-1", "--token-file", "gone.token"],
        "steer accept",
        ["--token-file", "gone.token", "does not exist"],
    ),
    "steer/token-empty": (
        ["steer", "stop", "run-1", "--token-file", "empty.token"],
        "steer stop",
        ["empty.token is empty"],
    ),
    "steer/token-binary": (
        ["steer", "hold", "run-1", "afm-twin", "--token-file", "binary.token"],
        "steer hold",
        ["--token-file binary.token is not text"],
    ),
    "steer/position-nan": (
        ["steer", "override", "run-1", "--x", "nan", "--y", "1", "--token-file", "steer.token"],
        "steer override",
        ["--x", "nan is not a finite number"],
    ),
    "steer/seed-inf": (
        ["steer", "seed", "run-1", "--instrument", "afm-twin", "--x", "1", "--y", "inf"]
        + ["--token-file", "steer.token"],
        "steer seed",
        ["--y", "inf"],
    ),
    "steer/weight-inf": (
        ["steer", "weight", "run-1", "afm-twin", "inf", "--token-file", "steer.token"],
        "steer weight",
        ["VALUE", "inf"],
    ),
    "steer/box-nan": (
        ["steer", "exclude", "run-1", "--box", "0", "nan", "0", "1"]
        + ["--token-file", "steer.token"],
        "steer exclude",
        ["--box", "nan"],
    ),
    "steer/score-out-of-range": (
        ["steer", "vote", "run-1", "m-1", "9", "--token-file", "steer.token"],
        "steer vote",
        ["'score'", "less than or equal to 5"],
    ),
    "steer/no-server": (
        ["steer", "accept", "run-1", "--token-file", "steer.token"],
        "steer accept",
        ["cannot reach the Prefect server at http://127.0.0.1:", "coorch up"],
    ),
    "steer/list-no-server": (["steer", "list"], "steer list", ["cannot reach the Prefect"]),
    # coorch campaign / facility
    "campaign/submit-misspelt": (
        ["campaign", "submit", "misspelt.yaml"],
        "campaign submit",
        ["budjet"],
    ),
    "campaign/list-no-facility": (["campaign", "list"], "campaign list", ["no facility is up"]),
    "campaign/show-broken-facility": (
        ["campaign", "show", "x", "--dir", "broken-facility"],
        "campaign show",
        ["cannot read it"],
    ),
    "facility/plan-no-database": (
        ["facility", "plan", "--dir", "nowhere"],
        "facility plan",
        ["no facility database at sqlite:///", "--db"],
    ),
    "facility/simulate-no-instruments": (
        ["facility", "simulate", "--instruments", "0"],
        "facility simulate",
        ["'--instruments'", "greater than or equal to 1"],
    ),
    # coorch up / down
    "up/port-out-of-range": (["up", "--port", "70000"], "up", ["'--port'", "65535"]),
    "up/dir-is-a-file": (["up", "--dir", "a-file"], "up", ["--dir a-file is not a folder"]),
    "up/config-missing": (
        ["up", "--dir", "f1", "--config", "gone.yaml"],
        "up",
        ["'--config'", "gone.yaml"],
    ),
    "up/config-not-yaml": (
        ["up", "--dir", "f2", "--config", "bad.yaml"],
        "up",
        ["bad.yaml", "not YAML", "line 2"],
    ),
    "up/config-misspelt-key": (
        ["up", "--dir", "f3", "--config", "misspelt.yaml"],
        "up",
        ["misspelt.yaml", "budjet: unknown key", "'budget'"],
    ),
    "down/unknown-option": (["down", "--directory", "x"], "down", ["--directory"]),
    # coorch demo (argument errors only: a good one runs campaigns)
    "demo/budget-too-small": (["demo", "--budget", "3"], "demo", ["'--budget'", "12"]),
    "demo/run-dir-is-a-file": (
        ["demo", "--run-dir", "a-file"],
        "demo",
        ["--run-dir", "a-file is not a folder"],
    ),
    "demo/no-facility-there": (
        ["demo", "--against", "no-facility"],
        "demo",
        ["--against no-facility", "no facility is up", "coorch up"],
    ),
    "demo/facility-json-unreadable": (
        ["demo", "--against", "broken-facility"],
        "demo",
        ["broken-facility/facility.json", "cannot read it"],
    ),
    # coorch bench (argument errors: the benchmarks themselves are not run)
    "bench/not-an-integer": (
        ["bench", "decision", "--observations", "many"],
        "bench decision",
        ["'--observations'", "valid integer"],
    ),
    "bench/unknown-benchmark": (["bench", "speed"], "bench", ["No such command 'speed'"]),
    "bench/dataset-missing": (
        ["bench", "efficiency", "--dataset", "gone.nc"],
        "bench efficiency",
        ["gone.nc", "No such file"],
    ),
    "bench/unknown-library": (
        ["bench", "efficiency", "--library", "nope", "--steps", "1", "--seeds", "1"],
        "bench efficiency",
        ["unknown library 'nope'"],
    ),
    # coorch itself
    "coorch/unknown-command": (["stor", "ls"], "", ["No such command 'stor'"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_two_lines_naming_it_and_status_2(coorch, name):
    args, command, fragments = CASES[name]
    res = coorch(*args)
    if command:
        assert_short(res, command, *fragments)
    else:  # errors of `coorch` itself: "coorch: ..."
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) <= 2, res.stderr
        assert all(line.startswith("coorch: ") for line in res.stderr.strip().splitlines())
        assert all(f in res.stderr for f in fragments), res.stderr


def test_a_secret_given_as_a_bad_option_is_not_repeated(coorch):
    """``-o s3cr3t`` (a secret key pasted without its name) is refused without echoing it."""
    res = coorch("store", "ls", "c.zarr", "-o", "s3cr3t")
    assert res.exit_code == 2 and "s3cr3t" not in res.output


def test_up_refuses_a_port_in_use_before_starting_anything(coorch, world):
    """The port check comes before the supervisor: nothing runs, no facility.json appears."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = coorch("up", "--dir", "fac-port", "--port", str(port))
    assert_short(res, "up", f"--port {port} is in use", "choose another")
    assert not (world / "fac-port" / "facility.json").exists()
    assert not (world / "fac-port" / "facility.log").exists()


def test_down_stops_nothing_and_removes_an_unreadable_facility_json(coorch, world):
    """A facility.json left unreadable (a killed supervisor, a disk full) does not stop
    `coorch down`: nothing runs there, so it is removed."""
    folder = world / "broken-down"
    folder.mkdir()
    (folder / "facility.json").write_text("[1, 2")
    res = coorch("down", "--dir", str(folder))
    assert res.exit_code == 0 and "no facility running" in res.stdout, res.output
    assert not (folder / "facility.json").exists()


def test_report_default_page_for_a_url_store():
    """``coorch report s3://bucket/c.zarr`` writes report.html here: the URL is not a path
    whose folder ("s3:/bucket") could take the page."""
    from coorch.report_cli import default_out

    assert default_out("s3://bucket/runs/c.zarr") == Path("report.html")
    assert default_out("runs/c.zarr") == Path("runs/report.html")
    assert default_out("file:///data/c.zarr/") == Path("/data/report.html")


def test_steer_refuses_a_position_outside_the_campaigns_library(capsys):
    """`steer override/seed` compare (x, y) with the library of the campaign's spec (a flow
    run's parameters, as the server returns them) before sending it."""
    import typer
    from prefect.client.schemas.objects import FlowRun

    from coorch.steer_cli import _check_inside

    spec = {
        "name": "c",
        "library": "smbfo",
        "instruments": [
            {
                "name": "afm-twin",
                "kind": "afm",
                "modality": "pfm_loop",
                "url": "http://127.0.0.1:1",
                "token_file": "t",
            }
        ],
    }
    import uuid

    run = FlowRun(flow_id=uuid.uuid4(), name="steady-campaign", parameters={"spec": spec})
    _check_inside("steer override", run, 9.5, 1.5)  # inside smbfo's 10 x 2 mm: no error
    with pytest.raises(typer.Exit) as stop:
        _check_inside("steer override", run, 12.0, 1.0)
    assert stop.value.exit_code == 2
    said = capsys.readouterr().err
    assert "outside the library of campaign steady-campaign" in said and "[0, 10]" in said
    unreadable = FlowRun(flow_id=uuid.uuid4(), name="old", parameters={"spec": {"x": 1}})
    _check_inside("steer override", unreadable, 99.0, 99.0)  # unknown spec: the campaign checks


def test_debug_shows_the_error_itself_in_process(coorch):
    """``--debug``: the original exception reaches the caller (Python prints its traceback)."""
    res = coorch("--debug", "store", "ls", "gone.zarr")
    assert res.exit_code == 1 and isinstance(res.exception, FileNotFoundError)
    res = coorch("--debug", "demo", "--run-dir", "a-file")
    assert isinstance(res.exception, ValueError) and "--run-dir" in str(res.exception)


@pytest.mark.slow
def test_steer_names_an_unknown_campaign(prefect_server, world, monkeypatch):
    """A real Prefect server that has no such run: one line pointing at `coorch steer list`."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.chdir(world)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    args = ["steer", "accept", "no-such-run", "--token-file", "steer.token"]
    res = CliRunner().invoke(app, args, prog_name="coorch")
    assert_short(res, "steer accept", "no flow run 'no-such-run'", "coorch steer list")


# ----------------------------------------------------------------- fresh processes

SCRIPT = [str(Path(sys.executable).with_name("coorch"))]
#: The CLI behind a hook that says at exit whether Prefect was imported: an error found
#: "before any server starts" must not even import it (a server takes ~20 s to start).
HOOKED = [
    sys.executable,
    "-c",
    "import atexit, sys\n"
    "atexit.register(lambda: print('prefect imported:', 'prefect' in sys.modules))\n"
    "from coorch.cli import app\n"
    "app(prog_name='coorch')\n",
]

#: name: (launcher, command line, the command, fragments; None: a --debug case). Commands that
#: would start a Prefect server, a facility or twins if their input were good.
PROCESSES: dict[str, tuple[list[str], list[str], str, list[str] | None]] = {
    "demo/run-dir": (HOOKED, ["demo", "--run-dir", "a-file"], "demo", ["--run-dir"]),
    "demo/against": (HOOKED, ["demo", "--against", "no-facility"], "demo", ["no facility"]),
    "up/config": (
        HOOKED,
        ["up", "--dir", "p1", "--config", "misspelt.yaml"],
        "up",
        ["budjet: unknown key"],
    ),
    # no PREFECT_API_URL here: Prefect would start its own server to find the run
    "steer/token-empty": (
        HOOKED,
        ["steer", "accept", "r", "--token-file", "empty.token"],
        "steer accept",
        ["is empty"],
    ),
    "steer/position-nan": (
        HOOKED,
        ["steer", "seed", "r", "--instrument", "a", "--x", "nan", "--y", "0"]
        + ["--token-file", "steer.token"],
        "steer seed",
        ["--x"],
    ),
    "store/debug": (SCRIPT, ["--debug", "store", "ls", "gone.zarr"], "store ls", None),
    "report/debug": (SCRIPT, ["--debug", "report", "plain.zarr"], "report", None),
    "up/debug": (SCRIPT, ["--debug", "up", "--dir", "a-file"], "up", None),
}


@pytest.fixture(scope="module")
def processes(world) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    """Each case of PROCESSES in its own ``coorch`` process, as many at once as CPUs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COORCH_", "PREFECT_API"))}
    env["COORCH_FACILITY"] = str(world / "no-facility")
    env["PREFECT_HOME"] = str(world / ".prefect")  # were one started, not in ~/.prefect

    def run(case: tuple) -> tuple[subprocess.CompletedProcess, float]:
        launcher, args, _, _ = case
        t0 = time.perf_counter()
        res = subprocess.run(
            [*launcher, *args], cwd=world, env=env, capture_output=True, text=True, timeout=300
        )
        return res, time.perf_counter() - t0

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        return dict(zip(PROCESSES, pool.map(run, PROCESSES.values()), strict=True))


@pytest.mark.parametrize("name", [n for n, c in PROCESSES.items() if c[3] is not None])
def test_an_error_comes_before_any_server_or_prefect(processes, name):
    _, _, command, fragments = PROCESSES[name]
    res, seconds = processes[name]
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert 1 <= len(lines) <= 2 and all(ln.startswith(f"coorch {command}: ") for ln in lines)
    assert all(f in res.stderr for f in fragments), res.stderr
    assert "prefect imported: False" in res.stdout, (res.stdout, f"{seconds:.1f} s")


@pytest.mark.parametrize("name", [n for n, c in PROCESSES.items() if c[3] is None])
def test_debug_shows_the_traceback(processes, name):
    res, _ = processes[name]
    assert res.returncode != 0
    assert "Traceback" in res.stderr, res.stderr
    assert f"coorch {PROCESSES[name][2]}: " not in res.stderr  # the traceback, not the summary


def test_the_cases_cover_every_sub_command():
    """Every command of ``coorch`` but the agents' (another module's) has a bad-input case."""
    import typer.main

    group = typer.main.get_command(app)
    names = {n for n in group.commands if n not in ("agent", "run", "im2spec")}
    covered = {name.split("/")[0] for name in CASES}
    assert names <= covered, names - covered
