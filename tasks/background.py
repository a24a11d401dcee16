"""Background work of a campaign behind one small protocol: refits, VAE trainings, physics fits.

Each piece of background work is polled by the campaign runtime (:class:`~coorch.tasks.runtime.
Campaign`) after every recorded measurement and finished once at the end. It reads what it
needs from the campaign (the agent's observation log, the describer's signals) and installs its
results there; pieces never call each other. A refit notices that a VAE relabelled the targets
through the log's ``revision``, not through a call from the VAE.

Work runs on an ``Executor``: the campaign's Dask cluster (``client.get_executor()``), a thread,
or :class:`InlineExecutor`, which runs it at once on the caller's thread. The efficiency
simulator uses the inline one, so its refits land before the next decision, as they would on an
instrument that is slow next to a fit.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from coorch.tasks.runtime import Campaign


class BackgroundWork(Protocol):
    """Work a campaign does beside its measurements, at its own rate."""

    def poll(self, campaign: Campaign) -> None:
        """Install what has finished; start what is due. Must not block."""

    def finish(self, campaign: Campaign) -> None:
        """Wait for what is running and bring the campaign's models up to date with every
        measurement (the campaign's answer uses all its data)."""


class InlineExecutor(Executor):
    """Runs each submitted call at once, on the caller's thread: background work made
    synchronous (simulations, and tests that need determinism)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            fut.set_exception(exc)
        return fut


def outcome(fut: Future) -> tuple[object | None, BaseException | None]:
    """(result, None) of a finished future, or (None, the exception it raised)."""
    exc = fut.exception()
    return (None, exc) if exc is not None else (fut.result(), None)
