"""A campaign's instrument-time budget and deadline, checked before each measurement starts.

Why here and not in the agent: the agent chooses *where*; whether a measurement may start at
all depends on what the campaign has spent, what its other instruments are measuring right now
and whether the sample must first be moved in, which only the measuring side knows. So every
measurement reserves its expected instrument-seconds before it moves (and gives them back if
it fails), and none starts that would pass the budget or begin after the deadline: the budget
is honoured exactly, not overrun by the last measurement.

Instrument-seconds are the agents' own cost model (``describe``): the modality's time, the
stage move at the instrument's speed, and a sample load when the sample is not in the
instrument. On a twin with a compressed clock they are the simulated seconds, not the wall
time the twin sleeps.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from coorch.records import InstrumentDescription


class Ended(Exception):
    """No measurement may start: the budget would be passed or the deadline has passed.
    ``instruments`` names the instruments it ends (empty: every one)."""

    def __init__(self, reason: str, instruments: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.instruments = tuple(instruments)


@dataclass(frozen=True)
class InstrumentTime:
    """What an instrument's work costs in instrument-seconds (from its agent's description)."""

    cost_s: Mapping[str, float]  # per modality
    move_s_per_mm: float
    load_s: float

    @classmethod
    def of(cls, desc: InstrumentDescription) -> InstrumentTime:
        return cls(
            {m.name: float(m.cost_s) for m in desc.modalities},
            float(desc.move_cost_s_per_mm),
            float(desc.sample_load_cost_s),
        )

    def expected(
        self,
        modality: str,
        here: Sequence[float] | None,
        there: Sequence[float],
        load: bool,
    ) -> float:
        """Seconds to move from ``here`` (None: unknown, counted as no move) to ``there``,
        load the sample if ``load``, and measure ``modality``."""
        move = 0.0 if here is None else math.dist(here[:2], there[:2]) * self.move_s_per_mm
        return self.cost_s[modality] + move + (self.load_s if load else 0.0)


class Meter:
    """Instrument-seconds spent and reserved by one campaign, against its budget and deadline.

    Thread-safe: each instrument's measurement runs on its own task thread."""

    def __init__(
        self,
        times: Mapping[str, InstrumentTime],
        *,
        budget_s: float | None = None,
        deadline: datetime | None = None,
        spent_s: float = 0.0,
    ) -> None:
        self.times = dict(times)
        self.budget_s, self.deadline = budget_s, deadline
        self.spent_s, self.reserved_s = float(spent_s), 0.0
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        """Does anything need checking (a budget in seconds or a deadline)?"""
        return self.budget_s is not None or self.deadline is not None

    def reserve(self, instrument: str, seconds: float) -> float:
        """Book ``seconds`` on ``instrument`` for a measurement about to start; raises
        :class:`Ended` (booking nothing) past the deadline or when the budget cannot hold it."""
        if self.deadline is not None and time.time() >= self.deadline.timestamp():
            raise Ended(f"deadline {self.deadline.isoformat()} passed")
        with self._lock:
            if self.budget_s is not None:
                left = self.budget_s - self.spent_s - self.reserved_s
                if seconds > left:
                    raise Ended(
                        f"budget: {instrument} needs {seconds:.0f} instrument-s, "
                        f"{max(left, 0.0):.0f} of {self.budget_s:.0f} left",
                        [instrument],
                    )
            self.reserved_s += seconds
        return seconds

    def settle(self, seconds: float, *, spent: bool) -> None:
        """A reservation of ``seconds`` is over: ``spent`` (measured) or given back (failed)."""
        with self._lock:
            self.reserved_s -= seconds
            if spent:
                self.spent_s += seconds
