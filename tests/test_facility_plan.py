"""``coorch facility plan``: the numbers, the Gantt chart and the page of a facility's schedule.

A small schedule worked out by hand (two instruments, three campaigns at two priorities, one
turn still held, two waiters, three sample transfers) on a compressed clock (time scale
0.002), then a real facility database filled through the arbiter and the sample registry, with
a real Prefect server holding the instrument slots.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from coorch.deployments.arbiter_records import Grant, Waiter
from coorch.facility_plan import plan_command, plan_figure, plan_html, plan_summary, write_plan
from coorch.facility_plan_page import campaign_colours, png_bytes
from coorch.storage.samples import Transfer

T0, SCALE = 1_800_000_000.0, 0.002  # wall clock of the first record; wall s per instrument s
HOSTILE = "<script>alert(1)</script>"


def wall(s: float) -> float:
    """Wall-clock time of instrument second ``s`` of the schedule."""
    return T0 + s * SCALE


NOW = wall(2400)
# id, instrument, campaign, owner, priority, enqueued, granted, released, charged (instrument s)
GRANTS = [
    Grant(1, "afm-twin", "alpha", "alice", 5, wall(0), wall(0), wall(600), 600.0, None),
    Grant(2, "afm-twin", "beta", "bob", 1, wall(100), wall(600), wall(1200), 550.0, 5),
    Grant(3, "raman-twin", "beta", "bob", 1, wall(0), wall(300), wall(900), 600.0, None),
    Grant(4, "raman-twin", "alpha", "alice", 5, wall(900), wall(1000), wall(1600), 600.0, None),
    Grant(5, "afm-twin", HOSTILE, "eve&co", 1, wall(200), wall(1200), wall(1800), 600.0, 1),
    Grant(6, "raman-twin", HOSTILE, "eve&co", 1, wall(1700), wall(1700), None, None, None),
]
WAITING = [
    Waiter(7, "afm-twin", "alpha", "alice", 5, wall(2000), False),
    Waiter(8, "raman-twin", "beta", "bob", 1, wall(2200), True),
]
TRANSFERS = [
    Transfer(1, "s-beta", "storage", "raman-twin", "beta", wall(300.5), 120.0),
    # at the boundary of grant 2 (beta) and grant 5 (its own campaign's): drawn on grant 5
    Transfer(2, "s-eve", "storage", "afm-twin", HOSTILE, wall(1200), 90.0),
    Transfer(3, "s-alpha", "afm-twin", "storage", "alpha", wall(1900), 60.0),  # to a shelf
]


def summary() -> dict:
    return plan_summary(GRANTS, WAITING, time_scale=SCALE, now=NOW)


def close(x: float | None, y: float) -> bool:
    return x is not None and abs(x - y) < 0.01  # wall seconds near 1.8e9 carry ~1e-4 s of error


def test_summary_of_a_known_schedule():
    s = summary()
    assert close(s["span_s"], 2400) and s["live"]  # live: the span runs to now
    afm, raman = s["instruments"]["afm-twin"], s["instruments"]["raman-twin"]
    assert close(afm["utilisation"], 1800 / 2400) and afm["turns"] == 3
    assert close(raman["utilisation"], 1900 / 2400)  # the held turn counts until now (700 s)
    assert close(afm["charged_s"], 1750) and close(raman["charged_s"], 1200)
    assert (raman["held"], afm["waiting"]) == (1, 1)

    assert list(s["priorities"]) == [5, 1]  # highest first
    p5, p1 = s["priorities"][5], s["priorities"][1]
    assert p5["turns"] == 2 and close(p5["median_wait_s"], 50) and close(p5["max_wait_s"], 100)
    assert p1["turns"] == 4 and close(p1["median_wait_s"], 400) and close(p1["max_wait_s"], 1000)

    alpha, beta, eve = (s["campaigns"][c] for c in ("alpha", "beta", HOSTILE))
    assert (alpha["owner"], alpha["priority"], alpha["turns"]) == ("alice", 5, 2)
    assert close(alpha["first_grant_s"], 0) and close(alpha["last_release_s"], 1600)
    assert close(beta["first_grant_s"], 300) and close(beta["last_release_s"], 1200)
    assert close(beta["charged_s"], 1150)
    assert eve["held"] == 1 and close(eve["last_release_s"], 1800)  # completion not yet: held
    assert list(s["campaigns"])[0] == "alpha"  # highest priority first

    queue = s["queue"]
    assert [w["campaign"] for w in queue["afm-twin"]] == ["alpha"]
    assert close(queue["afm-twin"][0]["waited_s"], 400) and not queue["afm-twin"][0]["loaded"]
    assert close(queue["raman-twin"][0]["waited_s"], 200)


def test_a_finished_facility_keeps_its_span_whatever_now_is():
    done = [g for g in GRANTS if g.released is not None]
    later = plan_summary(done, [], time_scale=SCALE, now=wall(10**6))
    assert not later["live"] and close(later["span_s"], 1800)
    assert close(later["instruments"]["afm-twin"]["utilisation"], 1.0)
    assert close(later["instruments"]["raman-twin"]["utilisation"], 1200 / 1800)


def test_summary_refuses_a_time_scale_that_is_no_clock():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="time_scale"):
            plan_summary(GRANTS, WAITING, time_scale=bad)


def _by_gid(artists, prefix: str) -> dict[str, object]:
    return {a.get_gid(): a for a in artists if (a.get_gid() or "").startswith(prefix)}


def test_figure_has_one_row_per_instrument_and_one_bar_per_grant():
    fig = plan_figure(GRANTS, WAITING, TRANSFERS, time_scale=SCALE, now=NOW)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["afm-twin", "raman-twin"]
    assert "(min; time scale 0.002)" in ax.get_xlabel()  # 40 min: minutes, not hours

    bars = _by_gid(ax.patches, "grant-")
    assert sorted(bars) == [f"grant-{g.id}" for g in GRANTS]
    for g in GRANTS:
        bar = bars[f"grant-{g.id}"]
        row = 0 if g.instrument == "afm-twin" else 1
        end = g.released if g.released is not None else NOW
        assert abs(bar.get_y() + bar.get_height() / 2 - row) < 1e-9
        assert abs(bar.get_x() - (g.granted - T0) / SCALE / 60) < 1e-3
        assert abs(bar.get_width() - (end - g.granted) / SCALE / 60) < 1e-3
    assert bars["grant-1"].get_facecolor() == bars["grant-4"].get_facecolor()  # alpha's colour
    colours = {bars[f"grant-{k}"].get_facecolor() for k in (1, 2, 5)}
    assert len(colours) == 3  # one colour per campaign

    moves = _by_gid(ax.patches, "transfer-")
    assert sorted(moves) == ["transfer-1", "transfer-2"]  # the move to storage has no row
    assert all(m.get_hatch() for m in moves.values())
    assert abs(moves["transfer-1"].get_x() - 5.0) < 1e-3  # at the start of grant 3 (300 s)
    assert abs(moves["transfer-1"].get_width() - 2.0) < 1e-3  # 120 s
    assert abs(moves["transfer-2"].get_x() - 20.0) < 1e-3  # grant 5, its campaign's, at 1200 s

    markers = _by_gid(ax.lines, "waiter-")
    assert sorted(markers) == ["waiter-7", "waiter-8"]
    assert abs(markers["waiter-7"].get_xdata()[0] - 2000 / 60) < 1e-3
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "alpha (alice, priority 5)" in legend and "sample transfer" in legend
    assert png_bytes(fig).startswith(b"\x89PNG")


def test_a_long_schedule_is_in_hours_and_odd_names_draw():
    odd = "$\\frac{$ 50% [bold]"  # mathtext that does not parse, if it were parsed
    grants = [Grant(1, "stem $1$", odd, "o$", 2, T0, T0, T0 + 5 * 3600, 5 * 3600.0, None)]
    fig = plan_figure(grants, [], time_scale=1.0)
    (ax,) = fig.axes
    assert "(h)" in ax.get_xlabel()
    assert abs(_by_gid(ax.patches, "grant-")["grant-1"].get_width() - 5.0) < 1e-9
    assert png_bytes(fig).startswith(b"\x89PNG")  # drawn, not parsed as a formula
    empty = plan_figure([], [], time_scale=1.0)
    assert png_bytes(empty).startswith(b"\x89PNG")


def test_campaign_colours_are_stable_and_distinct():
    names = [f"campaign-{k}" for k in range(20)]
    colours = campaign_colours(names)
    assert len(set(colours.values())) == 20  # twenty campaigns, twenty colours
    assert campaign_colours(names[::-1]) == colours  # the order they appear in does not matter
    few = ["alpha", "beta", "gamma"]  # palette slots 10, 11, 9 (CRC32): no collision
    assert campaign_colours(few) == {n: campaign_colours([n])[n] for n in few}  # stable per name


class _Page(HTMLParser):
    """Tags, table ids, the scripts and the images of a page, and whether its tags balance."""

    VOID = {"meta", "img", "br", "link", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tables: list[str] = []
        self.scripts = 0
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append(a.get("id", ""))
        if tag == "script":
            self.scripts += 1
        if tag == "img":
            self.images.append(a["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> closes nothing open"

    def handle_data(self, data):
        self.text.append(data)


def test_page_parses_escapes_names_and_embeds_the_chart():
    fig = plan_figure(GRANTS, WAITING, TRANSFERS, time_scale=SCALE, now=NOW)
    png = png_bytes(fig)
    page = plan_html(summary(), png, title="plan of <facility> & co")
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    assert parsed.stack == []  # every tag closed
    assert parsed.tables == ["queue", "instruments", "priorities", "campaigns"]
    assert parsed.scripts == 1  # our image counter; the hostile name is text
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "eve&amp;co" in page and "&lt;facility&gt; &amp; co" in page
    assert HOSTILE in "".join(parsed.text)  # and reads as itself
    (src,) = parsed.images
    assert base64.b64decode(src.removeprefix("data:image/png;base64,")) == png
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page)  # self-contained


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not on PATH (apt-get install -y chromium)")
    return exe


def test_page_shows_its_tables_in_headless_chromium(tmp_path):
    png = png_bytes(plan_figure(GRANTS, WAITING, TRANSFERS, time_scale=SCALE, now=NOW))
    out = tmp_path / "plan.html"
    out.write_text(plan_html(summary(), png, title="facility plan"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", out.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert re.search(r'<body[^>]*data-plots="1"', dom), dom[:300]  # the chart decoded
    for tid in ("queue", "instruments", "priorities", "campaigns"):
        table = re.search(rf'<table id="{tid}">(.*?)</table>', dom, re.S)
        assert table is not None, tid
        assert table.group(1).count("<tr>") >= 3, tid  # a header and at least two rows
    assert dom.count("<script") == 1 and "&lt;script&gt;alert(1)" in dom
    assert "<td>75%</td>" in dom and "<td>6.7 min</td>" in dom  # afm utilisation, p1 median


def _plan_app() -> typer.Typer:
    app = typer.Typer()
    app.command("plan")(plan_command)
    app.command("other")(lambda: None)  # two commands: "plan" stays a sub-command
    return app


def test_plan_command_refuses_what_it_cannot_plan(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(_plan_app(), ["plan", "--dir", str(tmp_path)])
    assert missing.exit_code == 2
    assert "no facility database at sqlite:///" in missing.output
    (tmp_path / "facility.db").touch()
    for bad in ("0", "-1", "nan"):
        r = runner.invoke(_plan_app(), ["plan", "--dir", str(tmp_path), "--time-scale", bad])
        assert r.exit_code == 2 and "--time-scale must be > 0" in r.output, r.output


def _wait_for(check, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _table_text(page: str, tid: str) -> str:
    table = re.search(rf'<table id="{tid}">(.*?)</table>', page, re.S)
    assert table is not None, tid
    return table.group(1)


def _fill_facility(url: str, tmp_path: Path) -> list[Path]:
    """Two campaigns through the arbiter and the registry: alpha holds the AFM with its sample
    in while beta waits for it (plan written then), then beta's turn (plan written after)."""
    from coorch.deployments.arbiter import Arbiter
    from coorch.storage.samples import SampleRegistry

    with Arbiter(url, poll_s=0.01) as arbiter, SampleRegistry(url) as registry:
        arbiter.ensure_limits(["afm-twin", "raman-twin"])
        for sample, campaign in (("s-alpha", "alpha"), ("s-beta", "beta")):
            registry.register(sample, "smbfo")
            registry.claim(campaign, [sample])
        with arbiter.wait("raman-twin", campaign="beta", owner="bob", priority=1) as turn:
            registry.transfer("s-beta", "raman-twin", campaign="beta", cost_s=60)
            turn.release(charged_s=100)
        alpha = arbiter.wait("afm-twin", campaign="alpha", owner="alice", priority=5)
        registry.transfer("s-alpha", "afm-twin", campaign="alpha", cost_s=120)

        def beta() -> None:
            with arbiter.wait("afm-twin", campaign="beta", owner="bob", priority=1) as turn:
                registry.transfer("s-beta", "afm-twin", campaign="beta", cost_s=90)
                turn.release(charged_s=200)

        waiter = threading.Thread(target=beta)
        waiter.start()
        _wait_for(lambda: arbiter.waiting("afm-twin"), "beta to queue for the AFM")
        live = write_plan(url, tmp_path / "live", time_scale=0.001)
        registry.transfer("s-alpha", "storage", campaign="alpha", cost_s=30)
        alpha.release(charged_s=300)
        waiter.join(60)
        assert not waiter.is_alive()
    return [*live, *write_plan(url, tmp_path / "done", time_scale=0.001)]


@pytest.mark.slow
def test_write_plan_and_the_command_on_a_real_facility_database(tmp_path):
    from coorch.deployments.arbiter import Arbiter
    from coorch.deployments.prefect_server import local_prefect_server
    from coorch.storage.samples import SampleRegistry

    url = f"sqlite:///{tmp_path / 'facility.db'}"
    with local_prefect_server(tmp_path / "prefect"):
        live_html, live_png, done_html, done_png = _fill_facility(url, tmp_path)
    assert (live_html.name, live_png.name) == ("live.html", "live.png")
    assert live_png.read_bytes().startswith(b"\x89PNG") and done_png.stat().st_size > 0

    live = live_html.read_text()
    queue = _table_text(live, "queue")
    assert "<td>afm-twin</td><td>beta</td><td>bob</td><td>1</td>" in queue
    assert "alpha" not in queue  # alpha holds the AFM, it does not wait for it
    assert "<td>afm-twin</td><td>" in _table_text(live, "instruments")

    done = done_html.read_text()
    assert "none" in _table_text(done, "queue")  # nobody waits any more
    campaigns = _table_text(done, "campaigns")
    assert re.search(
        r"<td>alpha</td><td>alice</td><td>5</td><td>1</td><td>5\.0 min</td>", campaigns
    )
    assert re.search(r"<td>beta</td><td>bob</td><td>1</td><td>2</td><td>5\.0 min</td>", campaigns)

    with Arbiter(url) as arbiter, SampleRegistry(url) as registry:
        grants, transfers = arbiter.grants(), registry.transfers()
    assert [g.campaign for g in grants] == ["beta", "alpha", "beta"]
    (ax,) = plan_figure(grants, [], transfers, time_scale=0.001).axes
    assert len(_by_gid(ax.patches, "grant-")) == 3
    moves = _by_gid(ax.patches, "transfer-")
    assert len(moves) == 3  # into the Raman, into the AFM twice; the move back has no row
    starts = {_by_gid(ax.patches, "grant-")[f"grant-{g.id}"].get_x() for g in grants}
    assert {m.get_x() for m in moves.values()} == starts  # each at the start of its turn

    result = CliRunner().invoke(
        _plan_app(), ["plan", "--dir", str(tmp_path), "--time-scale", "0.001"]
    )
    assert result.exit_code == 0, result.output
    assert "afm-twin" in result.output and "raman-twin" in result.output
    assert f"plan: {tmp_path / 'plan.html'}" in result.output.replace("\n", "")
    assert (tmp_path / "plan.html").is_file() and (tmp_path / "plan.png").is_file()


def test_plan_command_finds_the_database_facility_json_names(tmp_path):
    from coorch.deployments.arbiter import Arbiter
    from coorch.deployments.facility import FacilityInfo
    from coorch.storage.samples import SampleRegistry

    url = f"sqlite:///{tmp_path / 'elsewhere' / 'shared.db'}"
    (tmp_path / "elsewhere").mkdir()
    Arbiter(url).close()  # an empty facility database: the tables, no turn yet
    SampleRegistry(url).close()
    site = tmp_path / "facility"
    site.mkdir()
    info = FacilityInfo(
        prefect_api_url="http://127.0.0.1:1/api",
        ui_url="http://127.0.0.1:1",
        dask_address="tcp://127.0.0.1:2",
        library="smbfo",
        instruments=[],
        token_file="agent.token",
        steer_token_file="steer.token",
        campaign_spec="campaign.yaml",
        log_file="facility.log",
        supervisor_pid=1,
        facility_db=url,
    )
    (site / "facility.json").write_text(info.model_dump_json())
    result = CliRunner().invoke(_plan_app(), ["plan", "--dir", str(site)])
    assert result.exit_code == 0, result.output
    assert (site / "plan.html").is_file() and (site / "plan.png").is_file()
    page = (site / "plan.html").read_text()
    assert "shared.db" in page and "none" in _table_text(page, "instruments")
