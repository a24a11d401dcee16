"""Instruments that stop answering: what counts as lost, and a watchdog that notices their return.

A facility campaign runs for days; an instrument's agent will be restarted, a switch will be
rebooted. The client already rides out short trouble (retries with backoff, the same request id,
a lapsed lease taken again). What outlasts its retries is one of two things:

- **lost** (:data:`LOST`): the agent does not answer, or another controller holds the
  instrument. The campaign marks it unavailable, keeps its unfinished decision for later and
  goes on with the others (:meth:`coorch.tasks.runtime.Campaign.lose`);
- **faulted** (:data:`FAULTED`): the agent answered that the instrument is in a fault a retry
  will not clear (a broken tip) or the operation was aborted. A reset clears it; the same
  request is then sent again (the agent measured nothing under that id).

Anything else (a move out of limits, a store that cannot be written) is a bug or a bad spec, and
still fails the campaign.

The :class:`Watchdog` probes each unavailable instrument from its own thread and, once it
answers, takes its lease again and reloads the sample before saying so on the campaign's event
queue; the flow's thread then re-issues the waiting decision. No Prefect here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from coorch.instrument_agents.client import (
    InstrumentError,
    InstrumentFault,
    InstrumentUnavailable,
    LeaseConflict,
    MeasurementAborted,
)

#: Errors after which the instrument is unavailable to this campaign until it answers again.
LOST: tuple[type[Exception], ...] = (InstrumentUnavailable, LeaseConflict)
#: Errors a reset clears; the same request is sent again afterwards.
FAULTED: tuple[type[Exception], ...] = (InstrumentFault, MeasurementAborted)


class Watchdog:
    """Probes unavailable instruments every ``interval_s`` from a daemon thread.

    Args:
        reconnect: called with an instrument's name from the watchdog's thread; takes the
            instrument back (lease, sample) or raises :class:`InstrumentError`.
        events: where ``("regained", name)`` goes once ``reconnect`` succeeds.
        interval_s: seconds between probes of one instrument.
    """

    def __init__(
        self,
        reconnect: Callable[[str], None],
        events: queue.Queue,
        *,
        interval_s: float = 5.0,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.reconnect, self.events, self.interval_s = reconnect, events, interval_s
        self.log = log or logging.getLogger(__name__)
        self._down: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coorch-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, name: str) -> None:
        """Start probing ``name`` (it stopped answering)."""
        with self._lock:
            self._down.add(name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                down = sorted(self._down)
            for name in down:
                if self._stop.is_set():
                    return
                try:
                    self.reconnect(name)
                except InstrumentError as exc:
                    self.log.debug("instrument %s still unavailable: %s", name, exc)
                    continue
                with self._lock:
                    self._down.discard(name)
                self.events.put(("regained", name))
