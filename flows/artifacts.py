"""Prefect artifacts of a running campaign, published off the flow's thread.

What a Prefect UI user sees on the flow run's Artifacts tab while a campaign runs: its progress
(one artifact, updated in place), a Markdown summary at each model update (per task: how many
measurements, the mean posterior uncertainty, the model version), the decisions with their
reasons (a table), and a link to the HTML report.

Why a background thread: every artifact is an HTTP round trip to the Prefect API (a few ms on
loopback, far more to a facility server or when it is busy), and a campaign's orchestration
budget is 25 ms per measurement. :class:`CampaignArtifacts` only records the latest payload
of each kind on the calling thread (microseconds) and one daemon thread sends them. Each
payload is a full snapshot, so a newer one replaces an unsent older one of its kind: a slow API
gets fewer, never stale, updates (the progress bar shows the latest value, the summary's
history skips versions the API could not keep up with).

Why the thread runs in a copy of the caller's ``contextvars``: Prefect's ``create_*_artifact``
find the flow (or task) run they attach to, the API URL (settings) and the client through
context variables, which a plain thread does not see; with the copy they attach to the run
that created this object. Create it inside the flow, and ``close()`` (or leave the ``with``
block) before the flow returns: it flushes what is pending, and after the flow returns
Prefect's client is closed.

Publishing never raises into the campaign: the first failure is logged (on the run's logger,
so the UI shows it), later ones are counted and reported once at ``close()``.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from coorch.records import Decision, HumanInput

__all__ = ["CampaignArtifacts", "artifact_key"]

_NOT_A_KEY_CHAR = re.compile(r"[^a-z0-9]+")
_MAX_SLUG = 50


def artifact_key(campaign: str, what: str) -> str:
    """``<campaign slug>-<what>``: Prefect keys allow lowercase letters, digits and dashes
    only, so anything else becomes one dash ("SmBFO run #2" -> "smbfo-run-2-progress")."""
    slug = _NOT_A_KEY_CHAR.sub("-", campaign.lower()).strip("-")[:_MAX_SLUG].strip("-")
    return f"{slug or 'campaign'}-{what}"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task (its lines show in the UI), else ours."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("coorch.artifacts")


class CampaignArtifacts:
    """The artifacts of campaign ``campaign`` with a budget of ``budget`` measurements.

    Calls return at once; one call to the Prefect API goes out per ``interval_s`` at most (a
    measurement every 25 ms would otherwise keep the API busy with progress updates);
    ``close()`` sends what is pending (waiting at most ``close_timeout_s``) and stops the
    thread. Keys: :func:`artifact_key` of ``campaign`` and
    ``progress``, ``summary``, ``decisions``, ``report``. ``max_rows`` bounds the decisions
    table to the latest rows (a table artifact is one JSON document, resent whole).
    """

    def __init__(
        self,
        campaign: str,
        budget: int,
        *,
        max_rows: int = 1000,
        close_timeout_s: float = 10.0,
        interval_s: float = 5.0,
    ) -> None:
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        self.campaign, self.budget = campaign, budget
        self.max_rows, self.close_timeout_s = max_rows, close_timeout_s
        kinds = ("progress", "summary", "decisions", "report", "theory")
        self.keys = {kind: artifact_key(campaign, kind) for kind in kinds}
        self.failures = 0
        self._log = _logger()
        self._n = 0
        self._progress_id: UUID | None = None
        self._pending: dict[str, Callable[[], None]] = {}
        self._wake = threading.Condition()
        self._closed = False
        self.interval_s = interval_s
        self._closing = threading.Event()  # cuts the pause between sends short
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._work,), name=f"artifacts-{campaign}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------ the flow's side: cheap
    def progress(self, n: int) -> None:
        """``n`` measurements done: the progress artifact shows ``100 n / budget`` %."""
        self._n = n
        percent = round(100.0 * min(max(n, 0), self.budget) / self.budget, 1)
        self._post("progress", lambda: self._send_progress(percent))

    def summary(self, tasks: Mapping[str, Mapping[str, Any]], model_version: str = "") -> None:
        """At a model update: ``tasks`` maps each task (instrument, or instrument:descriptor)
        to ``{"n": measurements, "mean_sd": mean posterior sd over the candidates}`` and
        optionally its own ``"model_version"`` (else ``model_version``)."""
        rows = {name: dict(row) for name, row in tasks.items()}  # the caller may reuse its dicts
        n, at = self._n, time.time()
        self._post("summary", lambda: self._send_summary(rows, model_version, n, at))

    def decisions(self, decisions: Sequence[Decision]) -> None:
        """The decisions so far (oldest first), each with its reason, as one table."""
        rows = tuple(decisions[-self.max_rows :])  # formatted on the publishing thread
        self._post("decisions", lambda: self._send_decisions(rows))

    def report(self, path: str | Path, text: str | None = None) -> None:
        """A link to the campaign's HTML report at ``path`` (a local file: a file:// link)."""
        link = Path(path).resolve().as_uri()
        label = text or Path(path).name
        self._post("report", lambda: self._send_link(link, label))

    def theory(self, history: Sequence[Mapping[str, Any]]) -> None:
        """A co-navigation's parameter posterior over time: one row per theory fit (the
        measurements and simulations it read, each parameter's mean and 90 % interval)."""
        rows = [dict(r) for r in history[-self.max_rows :]]
        self._post("theory", lambda: self._send_table(rows, "theory", "the theory's parameters"))

    def close(self) -> None:
        """Send what is pending, then stop the thread; idempotent. Waits at most
        ``close_timeout_s`` (an unreachable API must not hold the flow's end)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._closing.set()
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            self._log.warning(
                "artifacts of %s: %d update(s) not sent within %g s; dropped",
                self.campaign,
                len(self._pending),
                self.close_timeout_s,
            )
        elif self.failures > 1:
            self._log.warning(
                "artifacts of %s: %d publish calls failed in all", self.campaign, self.failures
            )

    def __enter__(self) -> CampaignArtifacts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, kind: str, send: Callable[[], None]) -> None:
        with self._wake:
            if self._closed:
                return
            self._pending[kind] = send  # replaces an unsent older snapshot, keeps its turn
            self._wake.notify()

    # ------------------------------------------------------------ the publishing thread
    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                kind = next(iter(self._pending))
                send = self._pending.pop(kind)
            try:
                send()
            except Exception as exc:  # never into the campaign: log the first, count the rest
                self.failures += 1
                if self.failures == 1:
                    self._log.warning(
                        "artifacts of %s not published (%s: %s); the campaign goes on",
                        self.campaign,
                        type(exc).__name__,
                        exc,
                    )
            # at most one API call per interval: each costs the Prefect server CPU that, on a
            # small machine, the flow and the instruments' agents share
            self._closing.wait(self.interval_s)

    def _send_progress(self, percent: float) -> None:
        if self._progress_id is None:
            self._progress_id = create_progress_artifact(
                percent,
                key=self.keys["progress"],
                description=f"{self.campaign}: measurements done of {self.budget}",
                _sync=True,
            )
        else:
            update_progress_artifact(self._progress_id, percent, _sync=True)

    def _send_summary(
        self, tasks: dict[str, dict[str, Any]], model_version: str, n: int, at: float
    ) -> None:
        create_markdown_artifact(
            summary_markdown(self.campaign, self.budget, n, tasks, model_version, at),
            key=self.keys["summary"],
            description=f"{self.campaign}: the model at its last update",
            _sync=True,
        )

    def _send_decisions(self, decisions: tuple[Decision, ...]) -> None:
        create_table_artifact(
            [decision_row(d) for d in decisions],
            key=self.keys["decisions"],
            description=f"{self.campaign}: what was measured where, and why",
            _sync=True,
        )

    def _send_table(self, rows: list[dict[str, Any]], kind: str, what: str) -> None:
        create_table_artifact(
            rows, key=self.keys[kind], description=f"{self.campaign}: {what}", _sync=True
        )

    def _send_link(self, link: str, text: str) -> None:
        create_link_artifact(
            link,
            link_text=text,
            key=self.keys["report"],
            description=f"{self.campaign}: the HTML report",
            _sync=True,
        )


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.{digits}g}"
    return "–" if x is None else str(x)


def summary_markdown(
    campaign: str,
    budget: int,
    n: int,
    tasks: Mapping[str, Mapping[str, Any]],
    model_version: str,
    at: float,
) -> str:
    """The summary artifact's Markdown: a heading with progress, one table row per task."""
    when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"### {campaign}: {n} of {budget} measurements",
        "",
        f"Model `{model_version or '–'}`, updated {when}.",
        "",
        "| task | measurements | mean uncertainty (sd) | model version |",
        "|---|---:|---:|---|",
    ]
    for name, row in tasks.items():
        version = row.get("model_version", model_version) or "–"
        lines.append(
            f"| {name} | {_fmt(row.get('n'))} | {_fmt(row.get('mean_sd'))} | `{version}` |"
        )
    return "\n".join(lines) + "\n"


def _human(h: HumanInput | None) -> str:
    if h is None:
        return ""
    detail = ", ".join(f"{k}={_fmt(v)}" for k, v in h.detail.items())
    return f"{h.operator}: {h.action}" + (f" ({detail})" if detail else "")


def decision_row(d: Decision) -> dict[str, Any]:
    """One row of the decisions table (a seed's NaN acquisition value becomes null: JSON)."""
    value = d.acquisition_value
    return {
        "time": datetime.fromtimestamp(d.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "instrument": d.instrument,
        "x": round(d.library_x, 3),
        "y": round(d.library_y, 3),
        "policy": d.policy,
        "acquisition value": float(f"{value:.4g}") if math.isfinite(value) else None,
        "model version": d.model_version,
        "human input": _human(d.human_input),
    }
