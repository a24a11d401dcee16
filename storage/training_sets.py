"""A decision's training set, resolved from the chain the decisions table stores it as.

Each decision row lists in ``trained_on`` only the measurement ids its model read since the
decision named in ``trained_since`` (all of them when that is empty). Stored in full, the sets
grow as the square of a campaign's length: ~2 x 10^8 ids for 20,000 measurements, a week of
one fast instrument. These functions work on ``links`` (decision id -> (trained_since,
trained_on) as stored), which the store's table, a Parquet export or a list of records all
give, so lineage stays a pure function of exported data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd

#: decision id -> (the decision it extends or None, the ids added since it)
Links = Mapping[str, tuple[str | None, Sequence[str]]]


class BrokenChain(ValueError):
    """A chain that cannot be resolved: :class:`DanglingLink` or :class:`LoopingChain`."""


class DanglingLink(BrokenChain):
    """A ``trained_since`` names a decision the table lacks."""


class LoopingChain(BrokenChain):
    """Following ``trained_since`` comes back to a decision already passed."""


def links_of(rows: Iterable[tuple[str, str | None, Sequence[str] | None]]) -> dict[str, tuple]:
    """Links from (decision id, trained_since, trained_on) rows; an empty ``trained_since``
    (a store's ``''``, an export's None or NaN) ends a chain."""
    return {
        str(did): (since if isinstance(since, str) and since else None, list(ids or []))
        for did, since, ids in rows
    }


def table_links(decisions: pd.DataFrame) -> dict[str, tuple]:
    """Links from a decisions table (``store.decisions()`` or a Parquet export's; an export
    written before ``trained_since`` existed has no such column: every set is whole)."""
    if decisions.empty:
        return {}
    n = len(decisions)
    since = decisions["trained_since"] if "trained_since" in decisions else [None] * n
    return links_of(zip(decisions["decision_id"], since, decisions["trained_on"], strict=True))


def _chain(links: Links, decision_id: str) -> list[str]:
    """``decision_id`` and the decisions it extends, newest first."""
    out: list[str] = []
    seen: set[str] = set()
    cur: str | None = decision_id
    while cur is not None:
        if cur in seen:
            raise LoopingChain(f"decision {decision_id}: trained_since loops at {cur}")
        if cur not in links:
            raise DanglingLink(f"decision {out[-1]}: trained_since names unknown decision {cur}")
        seen.add(cur)
        out.append(cur)
        cur = links[cur][0]
    return out


def trained_on_of(links: Links, decision_id: str) -> list[str]:
    """Every measurement id ``decision_id``'s model had read, in the order it read them.
    Raises KeyError for an unknown decision, :class:`BrokenChain` for a broken chain."""
    if decision_id not in links:
        raise KeyError(f"no decision {decision_id!r}")
    return [m for did in reversed(_chain(links, decision_id)) for m in links[did][1]]


def training_set_sizes(links: Links) -> dict[str, int]:
    """How many measurements each decision's model had read (-1 where its chain is broken),
    in time linear in the table."""
    sizes: dict[str, int] = {}
    for did in links:
        stack: list[str] = []
        on_stack: set[str] = set()
        cur: str | None = did
        while cur is not None and cur not in sizes and cur in links and cur not in on_stack:
            stack.append(cur)
            on_stack.add(cur)
            cur = links[cur][0]
        base = 0 if cur is None else sizes.get(cur, -1)
        for d in reversed(stack):
            base = -1 if base < 0 else base + len(links[d][1])
            sizes[d] = base
    return sizes


def trained_after(links: Links, measurement_id: str) -> list[str]:
    """The decisions whose training set holds ``measurement_id``, in the order of ``links``:
    those that added it, and every decision extending one of them."""
    children: dict[str, list[str]] = defaultdict(list)
    for did, (since, _) in links.items():
        if since is not None:
            children[since].append(did)
    todo = [did for did, (_, ids) in links.items() if measurement_id in ids]
    found: set[str] = set()
    while todo:
        did = todo.pop()
        if did not in found:
            found.add(did)
            todo.extend(children.get(did, ()))
    return [did for did in links if did in found]


def chain_problems(links: Links) -> list[str]:
    """``verify``'s findings: each decision whose chain names an unknown decision or loops."""
    out: dict[str, None] = {}  # one finding per broken link, not per decision after it
    for did, n in training_set_sizes(links).items():
        if n < 0:
            try:
                _chain(links, did)
            except BrokenChain as exc:
                kind = "dangling ref" if isinstance(exc, DanglingLink) else "corrupt"
                out[f"{kind}: {exc}"] = None
    return list(out)


__all__ = [
    "BrokenChain",
    "DanglingLink",
    "LoopingChain",
    "Links",
    "chain_problems",
    "links_of",
    "table_links",
    "trained_after",
    "trained_on_of",
    "training_set_sizes",
]
