"""Seeded fault injection for the digital twins.

Real instruments fail in a few recognisable ways, and the flows must survive each of them; the
twins reproduce them at a chosen rate so the retry/idempotency machinery is exercised in tests:

* ``transient``: the call fails fast and a retry succeeds (HTTP 503);
* ``hang``: the instrument stalls for ``hang_s`` before answering (the client times out and
  retries; the server answers the retry from the in-flight/cached result);
* ``disconnect``: the measurement is done but the connection drops before the answer arrives
  (the retry must get the cached result, not a second measurement): the twin raises the
  protocol's :class:`~coorch.instrument_agents.protocol.ResponseLost`, re-exported here;
* ``latch``: a broken tip / lost beam: every measurement fails until ``reset``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np

from coorch.instrument_agents.protocol import ResponseLost

__all__ = ["DEFAULT_FAULT_WEIGHTS", "FaultInjector", "ResponseLost"]

DEFAULT_FAULT_WEIGHTS: dict[str, float] = {
    "transient": 0.5,
    "hang": 0.15,
    "disconnect": 0.25,
    "latch": 0.1,
}


class FaultInjector:
    """Draws at most one fault per call, with probability ``rate``, from a seeded stream."""

    def __init__(
        self, rate: float = 0.0, *, seed: int = 0, weights: Mapping[str, float] | None = None
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("fault rate must be within [0, 1]")
        weights = dict(DEFAULT_FAULT_WEIGHTS if weights is None else weights)
        unknown = set(weights) - set(DEFAULT_FAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        self.rate = rate
        self.kinds = list(weights)
        p = np.asarray([weights[k] for k in self.kinds], float)
        self._p = p / p.sum() if p.sum() > 0 else p
        self._rng = np.random.default_rng([seed, 0xFA017])
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(self.kinds, 0)

    def draw(self) -> str | None:
        """The fault for this call, or None."""
        if self.rate <= 0 or not self.kinds:
            return None
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
            kind = str(self._rng.choice(self.kinds, p=self._p))
            self.counts[kind] += 1
            return kind
