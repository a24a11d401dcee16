"""Named control tokens: one per campaign or per user, so the agent can say who took the lease.

Why names: with a single shared control token every controller looks the same, and a lease
record cannot say which campaign or person holds the instrument. Each token gets a name; the
agent records the *name* with the lease (``status``, its log) and never the token itself.

Two file shapes, kept apart on purpose (``coorch agent serve``):

* ``--token-file PATH`` (repeatable): the file holds one bare token, named after the file
  (``campaign-a.token`` -> ``campaign-a``). This is the old single-token file, read as before.
* ``--tokens-file PATH``: one ``name: token`` per line; blank lines and ``#`` comments skipped.

A bare token is never split at a colon: reading an old token file as ``name: token`` would
silently turn ``abc:def`` into the weaker token ``def``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from pathlib import Path

#: Token names appear in status and logs: keep them plain.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ControlTokens:
    """The agent's control tokens by name, matched in constant time; reprs show names only."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ValueError("a control token is required")
        for name, token in tokens.items():
            if not NAME.match(name):
                raise ValueError(f"token name {name!r}: use letters, digits, '.', '_', '-'")
            if not token or token != token.strip():
                raise ValueError(f"token {name!r} is empty or has surrounding spaces")
        if len(set(tokens.values())) != len(tokens):
            raise ValueError("two token names share one token: the lease record would be ambiguous")
        self._tokens = dict(tokens)

    @property
    def names(self) -> list[str]:
        return sorted(self._tokens)

    def name_of(self, presented: str | None) -> str | None:
        """The name of the control token ``presented`` is, or None. Every token is compared
        (no early exit), so the answer's timing does not say how many tokens were tried."""
        if presented is None:
            return None
        found = None
        for name, token in self._tokens.items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                found = name
        return found

    def __contains__(self, presented: object) -> bool:
        return isinstance(presented, str) and self.name_of(presented) is not None

    def __repr__(self) -> str:
        return f"ControlTokens({self.names})"


def read_token_file(path: Path) -> tuple[str, str]:
    """``(name, token)`` from a file holding one bare token; the name is the file's stem."""
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return path.stem, token


def read_tokens_file(path: Path) -> dict[str, str]:
    """``{name: token}`` from ``name: token`` lines (the token may itself contain colons)."""
    tokens: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ValueError(f"{path}:{n}: expected 'name: token'")  # never echo the line
        if name in tokens:
            raise ValueError(f"{path}:{n}: token name {name!r} appears twice")
        tokens[name] = token
    if not tokens:
        raise ValueError(f"tokens file {path} holds no 'name: token' line")
    return tokens
