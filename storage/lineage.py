"""Lineage: why a measurement exists, what it went on to influence, and what people said of it.

Kept as a pure function of the two tables so that it can be run on exported data too.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .training_sets import BrokenChain, Links, table_links, trained_after, trained_on_of


def _resolved(links: Links, decision_id: str) -> tuple[list[str], str | None]:
    """The decision's whole training set and None; on a broken chain, only the ids its own
    row lists, and why."""
    try:
        return trained_on_of(links, decision_id), None
    except BrokenChain as exc:
        return list(links[decision_id][1]), str(exc)


def _decision_record(row: pd.Series) -> dict[str, Any]:
    rec = row.to_dict()
    rec["created"] = row["created"].isoformat() if pd.notna(row["created"]) else None
    return rec


def _as_dict(value: Any) -> dict[str, Any] | None:
    """A ``human_input`` cell as a dict: the store gives a dict, a Parquet export a JSON
    string, and an absent input is None, NaN or ``"null"``."""
    if isinstance(value, str):
        value = json.loads(value) if value else None
    return value if isinstance(value, dict) else None


def _human_record(hi: dict[str, Any], decision_id: str) -> dict[str, Any]:
    """One human input as lineage shows it: ``at`` as ISO time (UTC), and the decision row
    that holds it, so the input can be found in the table."""
    at = hi.get("at")
    return {
        "operator": hi.get("operator"),
        "action": hi.get("action"),
        "at": pd.Timestamp(float(at), unit="s", tz="UTC").isoformat() if at is not None else None,
        "detail": dict(hi.get("detail") or {}),
        "replaced": hi.get("replaced"),
        "decision_id": decision_id,
    }


def human_inputs(
    decisions: pd.DataFrame, measurement_id: str, decision_id: str | None
) -> list[dict[str, Any]]:
    """Human inputs about ``measurement_id``, oldest first: the input on the decision that
    requested it (``decision_id``: an accept or override, with the proposal it replaced) and
    every input whose ``detail`` names it (votes on its signal)."""
    if decisions.empty or "human_input" not in decisions:
        return []
    out = []
    for did, cell in zip(decisions["decision_id"], decisions["human_input"], strict=True):
        hi = _as_dict(cell)
        if hi is None:
            continue
        about = (hi.get("detail") or {}).get("measurement_id") == measurement_id
        if about or (decision_id and did == decision_id):
            out.append(_human_record(hi, did))
    return sorted(out, key=lambda r: r["at"] or "")


def lineage(
    measurements: pd.DataFrame, decisions: pd.DataFrame, measurement_id: str
) -> dict[str, Any]:
    """One hop each way from ``measurement_id``, and the human inputs about it.

    back: the decision that requested it (``None`` if it was not requested by a stored
    decision) and the measurement ids that decision was trained on (its chain resolved, see
    ``training_sets``; ``chain_broken`` says why, when the set is cut short);
    forward: the decisions whose training set includes it and the measurements they caused.
    Rows that only record an operator's input (empty ``modality``: a vote, a stop) are not
    decisions in this sense, whatever their ``trained_on`` holds; they show under
    human: :func:`human_inputs`, each with operator, action, at, detail, replaced and the
    ``decision_id`` of its row.
    """
    hit = measurements[measurements["measurement_id"] == measurement_id]
    if hit.empty:
        raise KeyError(f"no measurement {measurement_id!r} in the store")
    m = hit.iloc[0]
    record = {
        k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in m.to_dict().items()
    }
    by_decision = measurements.groupby("decision_id")["measurement_id"].apply(list).to_dict()

    links = table_links(decisions)
    back: dict[str, Any] = {"decision": None, "trained_on": [], "chain_broken": None, "pending": []}
    if m["decision_id"]:
        d = decisions[decisions["decision_id"] == m["decision_id"]]
        if not d.empty:
            back["decision"] = _decision_record(d.iloc[0])
            back["trained_on"], back["chain_broken"] = _resolved(links, m["decision_id"])
            back["pending"] = list(d.iloc[0]["pending"] or [])
        else:
            back["decision"] = {"decision_id": m["decision_id"], "missing": True}

    forward_decisions = []
    caused: list[str] = []
    if not decisions.empty:
        requests = set(decisions["decision_id"][decisions["modality"].astype(str) != ""])
        for did in trained_after(links, measurement_id):
            if did in requests:
                forward_decisions.append(did)
                caused.extend(by_decision.get(did, []))
    return {
        "measurement": record,
        "back": back,
        "forward": {"decisions": forward_decisions, "measurements": caused},
        "human": human_inputs(decisions, measurement_id, m["decision_id"] or None),
    }
