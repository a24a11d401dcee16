"""The campaign's HTML report, rewritten while it runs: background work like a refit.

An operator steering a campaign needs a picture of it now, not after the last measurement:
this work rewrites :func:`~coorch.tasks.report_html.write_report` at model updates (at most
once per ``min_interval_s``, one at a time, on its own thread, from the campaign's own store,
which is safe to read while measurements are written) and once more at the end.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import TYPE_CHECKING

from coorch.tasks.background import outcome
from coorch.tasks.report_html import write_report

if TYPE_CHECKING:
    from coorch.tasks.runtime import Campaign


class LiveReport:
    """Keeps ``path`` a current report of the campaign (see the module docstring)."""

    def __init__(self, path: Path, executor: Executor, *, min_interval_s: float = 60.0) -> None:
        self.path, self.executor, self.min_interval_s = Path(path), executor, min_interval_s
        self.running: Future | None = None
        self.version: str | None = None
        self.last = -float("inf")
        self.written = 0
        self.failed = 0

    def poll(self, campaign: Campaign) -> None:
        if self.running is not None and self.running.done():
            self._landed(campaign)
        version = campaign.agent.model_version
        due = time.monotonic() - self.last >= self.min_interval_s
        if self.running is None and version != self.version and due:
            self.version, self.last = version, time.monotonic()
            self.running = self.executor.submit(write_report, campaign.store, self.path)

    def finish(self, campaign: Campaign) -> None:
        if self.running is not None:
            self.running.exception()  # waits for it
            self._landed(campaign)
        try:
            write_report(campaign.store, self.path)
            self.written += 1
        except Exception as exc:  # noqa: BLE001 - a report must not fail a finished campaign
            self.failed += 1
            campaign.log.warning("the campaign report could not be written: %s", exc)

    def _landed(self, campaign: Campaign) -> None:
        _, exc = outcome(self.running)
        self.running = None
        if exc is None:
            self.written += 1
        else:
            self.failed += 1
            campaign.log.warning("the live report could not be written: %s", exc)
