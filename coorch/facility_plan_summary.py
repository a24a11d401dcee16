"""The numbers of ``coorch facility plan``: who held which instrument for how long, who
waited how long at each priority, and when each campaign got its first turn and its last.

Why a module of its own: the plan's page (:mod:`coorch.facility_plan_page`) and the command
(:mod:`coorch.facility_plan`) both need the same clock, and the numbers are what the tests
check against a schedule worked out by hand.

Times: records hold wall-clock seconds since the epoch. On a compressed clock (twins with a
``time_scale``: 1 instrument second takes ``time_scale`` wall seconds) the plan is in
instrument time, ``(t - t0) / time_scale``, so a plan of a twin facility reads like the real
facility's would. A turn still held (``released`` None) lasts until ``now``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coorch.deployments.arbiter_records import Grant, Waiter


@dataclass(frozen=True)
class Clock:
    """Wall-clock seconds to the plan's instrument seconds, and the plan's span.

    ``end`` is the last record's time, or ``now`` where it is later and something is still
    held or waiting (a finished facility's plan does not stretch to the present day)."""

    t0: float
    end: float
    now: float
    scale: float
    live: bool

    @classmethod
    def of(
        cls,
        grants: Sequence[Grant],
        waiting: Sequence[Waiter],
        transfers: Sequence[Any] = (),
        *,
        time_scale: float = 1.0,
        t0: float | None = None,
        now: float | None = None,
    ) -> Clock:
        """The clock of these records (``transfers``: anything with an ``at``); ValueError
        for a ``time_scale`` that is not a positive number."""
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(
                f"time_scale must be > 0 (wall seconds per instrument second), got {time_scale}"
            )
        times = [t for g in grants for t in (g.enqueued, g.granted, g.released) if t is not None]
        times += [w.enqueued for w in waiting] + [tr.at for tr in transfers]
        live = bool(waiting) or any(g.released is None for g in grants)
        last = max(times, default=now if now is not None else 0.0)
        end = max(last, now) if (live and now is not None) else last
        start = min(times, default=end) if t0 is None else t0
        return cls(t0=start, end=end, now=end if now is None else now, scale=time_scale, live=live)

    def at(self, t: float) -> float:
        """Instrument seconds from ``t0`` to wall-clock time ``t``."""
        return (t - self.t0) / self.scale

    def seconds(self, wall_s: float) -> float:
        """A wall-clock duration in instrument seconds."""
        return wall_s / self.scale

    @property
    def span_s(self) -> float:
        """The plan's span in instrument seconds."""
        return self.at(self.end)

    def grant_end(self, g: Grant) -> float:
        """When a turn ended (wall clock): released, or ``now`` while held."""
        return g.released if g.released is not None else max(self.now, g.granted)


def _busy_s(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals (a dead holder's lapsed turn may overlap the next)."""
    total, reach = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def _instruments(grants: Sequence[Grant], waiting: Sequence[Waiter], clock: Clock) -> dict:
    names = sorted({g.instrument for g in grants} | {w.instrument for w in waiting})
    out = {}
    for name in names:
        mine = [g for g in grants if g.instrument == name]
        spans = [
            (max(clock.at(g.granted), 0.0), min(clock.at(clock.grant_end(g)), clock.span_s))
            for g in mine
        ]
        busy = _busy_s([(a, b) for a, b in spans if b > a])
        out[name] = {
            "utilisation": busy / clock.span_s if clock.span_s > 0 else 0.0,
            "busy_s": busy,
            "turns": len(mine),
            "charged_s": sum(g.charged_s or 0.0 for g in mine),
            "held": sum(g.released is None for g in mine),
            "waiting": sum(w.instrument == name for w in waiting),
        }
    return out


def _priorities(grants: Sequence[Grant], waiting: Sequence[Waiter], clock: Clock) -> dict:
    levels = sorted({g.priority for g in grants} | {w.priority for w in waiting}, reverse=True)
    out = {}
    for p in levels:
        waits = [clock.seconds(g.granted - g.enqueued) for g in grants if g.priority == p]
        out[p] = {
            "turns": len(waits),
            "median_wait_s": statistics.median(waits) if waits else None,
            "max_wait_s": max(waits) if waits else None,
            "waiting": sum(w.priority == p for w in waiting),
        }
    return out


def _campaigns(grants: Sequence[Grant], waiting: Sequence[Waiter], clock: Clock) -> dict:
    out: dict[str, dict] = {}
    for r in [*sorted(grants, key=lambda g: g.granted), *sorted(waiting, key=lambda w: w.enqueued)]:
        out.setdefault(r.campaign, {"owner": r.owner, "priority": r.priority})
    for name, row in out.items():
        mine = [g for g in grants if g.campaign == name]
        released = [g.released for g in mine if g.released is not None]
        row |= {
            "turns": len(mine),
            "charged_s": sum(g.charged_s or 0.0 for g in mine),
            "first_grant_s": clock.at(min(g.granted for g in mine)) if mine else None,
            "last_release_s": clock.at(max(released)) if released else None,
            "held": len(mine) - len(released),
            "waiting": sum(w.campaign == name for w in waiting),
        }
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["priority"], kv[0])))


def _queue(waiting: Sequence[Waiter], clock: Clock) -> dict[str, list[dict]]:
    """Who waits where, highest priority first, then earliest (the arbiter also weighs fair
    share between owners of equal priority; the plan shows the waiters, not the decision)."""
    out: dict[str, list[dict]] = {}
    for w in sorted(waiting, key=lambda w: (w.instrument, -w.priority, w.enqueued)):
        out.setdefault(w.instrument, []).append(
            {
                "campaign": w.campaign,
                "owner": w.owner,
                "priority": w.priority,
                "enqueued_s": clock.at(w.enqueued),
                "waited_s": clock.seconds(max(clock.now - w.enqueued, 0.0)),
                "loaded": w.loaded,
            }
        )
    return out


def plan_summary(
    grants: Sequence[Grant],
    waiting: Sequence[Waiter],
    *,
    time_scale: float,
    t0: float | None = None,
    now: float | None = None,
) -> dict:
    """What the plan's tables show, in instrument seconds from ``t0``.

    Keys: ``t0``, ``end`` (wall clock), ``time_scale``, ``span_s``, ``live``; ``instruments``
    (name: utilisation = busy fraction of the span, busy_s, turns, charged_s, held, waiting);
    ``priorities`` (highest first: turns, median_wait_s and max_wait_s = granted - enqueued,
    None without turns, waiting); ``campaigns`` (owner, priority, turns, charged_s,
    first_grant_s, last_release_s = completion, held, waiting); ``queue`` (instrument: its
    waiters, highest priority first: campaign, owner, priority, enqueued_s, waited_s, loaded).
    """
    clock = Clock.of(grants, waiting, time_scale=time_scale, t0=t0, now=now)
    return {
        "t0": clock.t0,
        "end": clock.end,
        "time_scale": clock.scale,
        "span_s": clock.span_s,
        "live": clock.live,
        "instruments": _instruments(grants, waiting, clock),
        "priorities": _priorities(grants, waiting, clock),
        "campaigns": _campaigns(grants, waiting, clock),
        "queue": _queue(waiting, clock),
    }
