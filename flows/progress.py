"""Progress of a running campaign, one record per measurement, through standard logging.

The flows log each recorded measurement on the ``coorch.progress`` logger at DEBUG level, with
what a progress display needs in ``record.coorch_progress``; nothing is formatted or sent
anywhere unless someone listens (:func:`watching`: the demo's progress bar, the overhead
benchmark's clock). A Prefect UI user sees the flow run's own log instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from coorch.records import Measurement

LOGGER = logging.getLogger("coorch.progress")

Watcher = Callable[[Measurement, dict], None]


def report(m: Measurement, **info) -> None:
    """Announce a recorded measurement ``m`` (``info``: n, budget, descriptor, why)."""
    if LOGGER.isEnabledFor(logging.DEBUG):
        LOGGER.debug(
            "%s: %d of %d",
            m.instrument,
            info.get("n", 0),
            info.get("budget", 0),
            extra={"coorch_progress": {"measurement": m, **info}},
        )


class _Call(logging.Handler):
    def __init__(self, fn: Watcher) -> None:
        super().__init__(logging.DEBUG)
        self.fn = fn

    def emit(self, record: logging.LogRecord) -> None:
        info = dict(getattr(record, "coorch_progress", {}))
        if info:
            self.fn(info.pop("measurement"), info)


@contextlib.contextmanager
def watching(fn: Watcher) -> Iterator[None]:
    """Call ``fn(measurement, info)`` for each measurement recorded by flows run inside."""
    handler, level, propagate = _Call(fn), LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
        LOGGER.propagate = propagate
