"""Lineage: why a measurement exists and what it went on to influence.

Kept as a pure function of the two tables so that it can be run on exported data too.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _decision_record(row: pd.Series) -> dict[str, Any]:
    rec = row.to_dict()
    rec["created"] = row["created"].isoformat() if pd.notna(row["created"]) else None
    return rec


def lineage(
    measurements: pd.DataFrame, decisions: pd.DataFrame, measurement_id: str
) -> dict[str, Any]:
    """One hop each way from ``measurement_id``.

    back: the decision that requested it (``None`` if it was not requested by a stored
    decision) and the measurement ids that decision was trained on;
    forward: the decisions whose ``trained_on`` include it and the measurements they caused.
    """
    hit = measurements[measurements["measurement_id"] == measurement_id]
    if hit.empty:
        raise KeyError(f"no measurement {measurement_id!r} in the store")
    m = hit.iloc[0]
    record = {
        k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in m.to_dict().items()
    }
    by_decision = measurements.groupby("decision_id")["measurement_id"].apply(list).to_dict()

    back: dict[str, Any] = {"decision": None, "trained_on": [], "pending": []}
    if m["decision_id"]:
        d = decisions[decisions["decision_id"] == m["decision_id"]]
        if not d.empty:
            back["decision"] = _decision_record(d.iloc[0])
            back["trained_on"] = list(d.iloc[0]["trained_on"] or [])
            back["pending"] = list(d.iloc[0]["pending"] or [])
        else:
            back["decision"] = {"decision_id": m["decision_id"], "missing": True}

    forward_decisions = []
    caused: list[str] = []
    if not decisions.empty:
        mask = decisions["trained_on"].apply(lambda ids: measurement_id in (ids or []))
        for _, d in decisions[mask].iterrows():
            forward_decisions.append(d["decision_id"])
            caused.extend(by_decision.get(d["decision_id"], []))
    return {
        "measurement": record,
        "back": back,
        "forward": {"decisions": forward_decisions, "measurements": caused},
    }
