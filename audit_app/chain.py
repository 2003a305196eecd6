"""The audit log's hash chain: entry hashing and verification. Pure: no Django.

Each sealed entry carries ``entry_hash = HMAC(key, prev_hash || canonical(fields))``. The
key (derived from the server's secret) means someone who can write to the database but
does not hold the secret cannot recompute a valid chain after changing a row.
"""

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

GENESIS = "0" * 64

# The content-bearing columns. Review columns are not here: they change after sealing.
HASHED_FIELDS = (
    "id",
    "chain_seq",
    "created_at",
    "kind",
    "user_id",
    "session_id",
    "turn_id",
    "role",
    "content_hash",
    "token_count",
    "count",
    "flagged",
    "reason",
    "evidence",
)


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if value is None or isinstance(value, (bool, int, str, list, dict)):
        return value
    return str(value)  # UUIDs


def canonical(fields: Mapping[str, object]) -> bytes:
    """Return the stable byte form of an entry's hashed fields."""
    plain = {name: _plain(fields.get(name)) for name in HASHED_FIELDS}
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(*, key: bytes, prev_hash: str, fields: Mapping[str, object]) -> str:
    """Return the hash that links an entry with ``fields`` to its predecessor."""
    return hmac.new(key, prev_hash.encode() + b"|" + canonical(fields), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Broken:
    """The first entry where the chain does not hold, and what is wrong with it."""

    chain_seq: int
    entry_id: int | None
    problem: str


@dataclass(frozen=True)
class Verdict:
    sealed: int
    broken: Broken | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(
    entries: Iterable[Mapping[str, object]], *, key: bytes, head_seq: int, head_hash: str
) -> Verdict:
    """Check ``entries`` (sealed, ordered by ``chain_seq``) against each other and the head.

    Report the first entry that was changed, inserted or is missing (a gap in the
    sequence), or a chain that ends before the head says it does.
    """
    expected_seq, prev = 1, GENESIS
    for entry in entries:
        problem = _link_problem(entry, key=key, expected_seq=expected_seq, prev=prev)
        if problem:
            return Verdict(expected_seq - 1, Broken(expected_seq, entry.get("id"), problem))
        prev, expected_seq = str(entry["entry_hash"]), expected_seq + 1
    sealed = expected_seq - 1
    if sealed != head_seq or (sealed and prev != head_hash):
        return Verdict(sealed, Broken(sealed + 1, None, _tail_problem(sealed, head_seq)))
    return Verdict(sealed, None)


def _link_problem(
    entry: Mapping[str, object], *, key: bytes, expected_seq: int, prev: str
) -> str | None:
    seq = entry["chain_seq"]
    if seq != expected_seq:
        return f"missing entry: expected sequence {expected_seq}, found {seq}"
    if entry["prev_hash"] != prev:
        return "link broken: prev_hash does not match the previous entry"
    if entry_hash(key=key, prev_hash=prev, fields=entry) != entry["entry_hash"]:
        return "entry altered or forged: its hash does not match its content"
    return None


def _tail_problem(sealed: int, head_seq: int) -> str:
    if sealed < head_seq:
        return f"missing entries: the chain ends at {sealed}, the head says {head_seq}"
    return f"entries past the head: the chain ends at {sealed}, the head says {head_seq}"
