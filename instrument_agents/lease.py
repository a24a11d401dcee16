"""The agent's controller lease: one controller at a time, and the lease is a capability.

Why a capability and not a name: a holder named by its ``X-Client-Id`` header is whoever claims
that name, so anyone with a control token could act as the holder (and ``status`` told them the
name to claim). Here ``POST /v1/lease`` hands out an unguessable ``lease_id``
(:func:`secrets.token_urlsafe`, 256 bits) that every control call must present as
``X-Lease-Id``; ``status`` shows who holds the instrument (holder name as given, the name of the
control token that took it, since when) but never the id. A lease id is bound to the token that
took it, so a leaked id is useless with another campaign's token.

Lifetime (as before): a lease lapses ``ttl_s`` seconds after its last activity; every control
call by the holder renews it, and a call still running counts as activity (a 30-minute sample
transfer must not let someone else take the stage half way). An expired lease frees the
instrument. Ids of leases that ended are remembered (as digests, a few dozen) only so that a
late caller is told *expired* rather than *invalid*.

Refusals (:class:`~coorch.instrument_agents.guards.ApiError`, the agent's usual error shape):

* 409 ``lease_conflict`` -- a live lease exists and the id presented (if any) is not it;
* 403 ``lease_required`` -- no lease is live and the call presented none (take one first);
* 403 ``lease_expired``  -- the id presented belonged to a lease that lapsed;
* 403 ``lease_invalid``  -- any other id: released, never issued, or taken with another token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coorch.instrument_agents.guards import ApiError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who sends a control request: the holder name it gives (``X-Client-Id``, a label only)
    and the name of the control token it authenticated with (the credential)."""

    client_id: str
    token_name: str


@dataclass
class Grant:
    """One lease as issued. ``lease_id`` and ``grant_key`` stay out of reprs (and so logs)."""

    lease_id: str = field(repr=False)
    holder: str
    token_name: str
    ttl_s: float
    since: float  # wall clock, for people
    expires: float  # monotonic clock, for the rule
    grant_key: str | None = field(default=None, repr=False)
    inflight: int = 0

    def public(self, now: float) -> dict[str, Any]:
        """What anyone with a token may see: everything but the id."""
        left = self.ttl_s if self.inflight else max(0.0, self.expires - now)
        return {
            "held": True,
            "holder": self.holder,
            "token_name": self.token_name,
            "since": self.since,
            "ttl_s": self.ttl_s,
            "expires_in_s": left,
        }


def _digest(lease_id: str) -> str:
    return hashlib.sha256(lease_id.encode()).hexdigest()


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and hmac.compare_digest(a.encode(), b.encode())


class Lease:
    """One controller at a time, named by an unguessable lease id (see the module docstring).

    ``clock`` is the monotonic clock the expiry is measured on (injectable for tests).
    """

    def __init__(
        self,
        default_ttl_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        remember: int = 64,
    ) -> None:
        self.default_ttl_s = default_ttl_s
        self._clock = clock
        self._grant: Grant | None = None
        self._ended: OrderedDict[str, str] = OrderedDict()  # digest -> why it ended
        self._remember = remember
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ internal
    def _end(self, grant: Grant, why: str) -> None:
        self._ended[_digest(grant.lease_id)] = why
        while len(self._ended) > self._remember:
            self._ended.popitem(last=False)
        if self._grant is grant:
            self._grant = None
        LOG.info(
            "lease %s: holder %r, token %r (held %.0f s)",
            why,
            grant.holder,
            grant.token_name,
            time.time() - grant.since,
        )

    def _live(self) -> Grant | None:
        """The current grant, ending it first if it lapsed (a running call keeps it alive)."""
        g = self._grant
        if g is not None and not g.inflight and self._clock() >= g.expires:
            self._end(g, "expired")
        return self._grant

    def _conflict(self, g: Grant) -> ApiError:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(g.since))
        left = g.public(self._clock())["expires_in_s"]
        return ApiError(
            409,
            "lease_conflict",
            f"instrument is leased by {g.holder!r} (token {g.token_name!r}) since {when}; "
            f"it lapses after {left:.0f} s without activity",
        )

    def _no_lease(self, presented: str | None) -> ApiError:
        if presented is None:
            return ApiError(
                403, "lease_required", "take the lease first (POST /v1/lease) and send X-Lease-Id"
            )
        why = self._ended.get(_digest(presented))
        if why == "expired":
            return ApiError(403, "lease_expired", "this lease lapsed without activity")
        return ApiError(403, "lease_invalid", f"no current lease has this id ({why or 'unknown'})")

    def _holder_grant(self, caller: Caller, presented: str | None) -> Grant:
        """The live grant ``presented`` names, taken with ``caller``'s token, or a refusal."""
        g = self._live()
        if g is None:
            raise self._no_lease(presented)
        if not _same(presented, g.lease_id):
            raise self._conflict(g)
        if caller.token_name != g.token_name:
            LOG.warning(
                "lease id of token %r presented with token %r (holder %r): refused",
                g.token_name,
                caller.token_name,
                caller.client_id,
            )
            raise ApiError(403, "lease_invalid", "this lease was taken with another token")
        return g

    # ------------------------------------------------------------------ routes' verbs
    def acquire(
        self,
        caller: Caller,
        presented: str | None,
        ttl_s: float | None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Take the lease, or renew it when ``presented`` is its id (``ttl_s`` then replaces
        the old one). ``request_id`` makes a retried take safe: until the lease id is first
        used, the same request id gets the same grant back instead of a 409 from its own lease.
        Returns the public view plus ``lease_id``."""
        ttl = ttl_s if ttl_s and ttl_s > 0 else self.default_ttl_s
        with self._lock:
            g = self._live()
            if g is not None:
                if not (_same(presented, g.lease_id) or _same(request_id, g.grant_key)):
                    raise self._conflict(g)
                if caller.token_name != g.token_name:
                    raise ApiError(403, "lease_invalid", "this lease was taken with another token")
                if _same(presented, g.lease_id):
                    g.grant_key = None  # the holder has its id: no replay needed any more
                g.ttl_s, g.expires = ttl, self._clock() + ttl
            else:
                g = Grant(
                    lease_id=secrets.token_urlsafe(32),
                    holder=caller.client_id,
                    token_name=caller.token_name,
                    ttl_s=ttl,
                    since=time.time(),
                    expires=self._clock() + ttl,
                    grant_key=request_id,
                )
                self._grant = g
                LOG.info(
                    "lease taken: holder %r, token %r, ttl %.0f s", g.holder, g.token_name, ttl
                )
            return {**g.public(self._clock()), "lease_id": g.lease_id}

    def enter(self, caller: Caller, presented: str | None) -> Grant:
        """Admit one control call by the holder: renew the lease and keep it alive until
        :meth:`leave`. Refuses everyone else (409/403, see the module docstring)."""
        with self._lock:
            g = self._holder_grant(caller, presented)
            g.grant_key = None  # the holder has its id: a replayed take is no longer needed
            g.inflight += 1
            g.expires = self._clock() + g.ttl_s
            return g

    def leave(self, grant: Grant) -> None:
        """The call :meth:`enter` admitted is over: the lease lapses ``ttl_s`` from now."""
        with self._lock:
            grant.inflight -= 1
            grant.expires = self._clock() + grant.ttl_s

    def release(self, caller: Caller, presented: str | None) -> None:
        """Give the lease back (its holder only). A no-op when nothing is leased, so that a
        retried release whose first answer was lost still succeeds."""
        with self._lock:
            if self._live() is None:
                return
            self._end(self._holder_grant(caller, presented), "released")

    def info(self) -> dict[str, Any]:
        """The public view for ``status``: held or free, holder, token name, since; no id."""
        with self._lock:
            g = self._live()
            if g is None:
                return {
                    "held": False,
                    "holder": None,
                    "token_name": None,
                    "since": None,
                    "expires_in_s": 0.0,
                }
            return g.public(self._clock())
