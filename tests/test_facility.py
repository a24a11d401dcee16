"""``coorch up`` / ``coorch down``: the embedded facility answers on every service, and stops
with nothing left behind, also when it fails to start.

Slow (~40 s): a Prefect server with its UI takes ~12 s to boot, and each test boots one.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import httpx
import psutil
import pytest
import typer
import yaml
from typer.testing import CliRunner

from coorch.deployments.config import CampaignSpec
from coorch.deployments.facility import down, read_info, running_pid
from coorch.facility_cli import down_command, up_command
from coorch.net import free_port

pytestmark = pytest.mark.slow

app = typer.Typer()
app.command("up")(up_command)
app.command("down")(down_command)


def _ours(run_dir: Path) -> list[psutil.Process]:
    """Every live process whose command line names ``run_dir`` (supervisor, agents)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(run_dir) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _cleanup(run_dir: Path):
    """Whatever happens in the test, stop the facility and kill any straggler."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            down(run_dir, timeout_s=30)
        for p in _ours(run_dir):
            with contextlib.suppress(psutil.Error):
                p.kill()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_up_serves_ui_api_agents_and_dask_then_down_stops_everything(tmp_path):
    run_dir, port = tmp_path / "facility", free_port()
    runner = CliRunner()
    with _cleanup(run_dir):
        up = runner.invoke(app, ["up", "--dir", str(run_dir), "--port", str(port)])
        assert up.exit_code == 0, up.output
        info = read_info(run_dir)
        assert info is not None and info.supervisor_pid == running_pid(run_dir)
        assert f"coorch campaign submit {info.campaign_spec}" in up.output
        assert info.ui_url == f"http://127.0.0.1:{port}" and info.ui_url in up.output
        supervisor = psutil.Process(info.supervisor_pid)
        processes = [supervisor, *supervisor.children(recursive=True)]

        ui = httpx.get(info.ui_url, timeout=10)
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
        assert "<html" in ui.text.lower()
        assert httpx.get(f"{info.prefect_api_url}/health", timeout=10).json() is True
        assert {a.name for a in info.instruments} == {
            "afm-twin",
            "raman-twin",
            "wds-twin",
            "stem-twin",
        }
        for agent in info.instruments:
            health = httpx.get(f"{agent.url}/v1/health", timeout=5)
            assert health.status_code == 200, agent
        assert Path(info.token_file).stat().st_mode & 0o777 == 0o600

        from distributed import Client

        with Client(info.dask_address, timeout=20) as client:
            assert client.submit(sum, [1, 2]).result(timeout=20) == 3

        spec = CampaignSpec(**yaml.safe_load(Path(info.campaign_spec).read_text()))
        assert spec.dask.address == info.dask_address
        assert [i.url for i in spec.instruments] == [a.url for a in info.instruments]
        assert Path(spec.store).parent == run_dir.resolve() / "campaigns"

        again = runner.invoke(app, ["up", "--dir", str(run_dir), "--port", str(free_port())])
        assert again.exit_code == 0 and "already up" in again.output

        stopped = runner.invoke(app, ["down", "--dir", str(run_dir)])
        assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
        # the supervisor has exited; a grandchild (a server's worker) may take a moment more
        _, left = psutil.wait_procs(processes, timeout=15)
        left = [p for p in left if p.is_running() and p.status() != "zombie"]
        assert [(p.pid, " ".join(p.cmdline()[:4])) for p in left] == []
        ports = [port, _port(info.dask_address), *(_port(a.url) for a in info.instruments)]
        assert [p for p in ports if _listening(p)] == []
        assert read_info(run_dir) is None and running_pid(run_dir) is None

        nothing = runner.invoke(app, ["down", "--dir", str(run_dir)])
        assert nothing.exit_code == 0 and "no facility running" in nothing.output


def test_a_failed_start_says_why_in_one_line_and_leaves_nothing_running(tmp_path):
    run_dir, port = tmp_path / "facility", free_port()
    config = tmp_path / "facility.yaml"
    config.write_text(yaml.safe_dump({"instruments": [{"kind": "afm", "modality": "raman"}]}))
    with _cleanup(run_dir):
        up = CliRunner().invoke(
            app, ["up", "--dir", str(run_dir), "--port", str(port), "--config", str(config)]
        )
        assert up.exit_code == 1
        message = up.output.strip()
        assert len(message.splitlines()) == 1, message
        assert "modality 'raman'" in message and str(run_dir / "facility.log") in message
        assert _ours(run_dir) == [] and not _listening(port)
        assert read_info(run_dir) is None and running_pid(run_dir) is None
