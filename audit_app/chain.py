"""The audit log's hash chain: entry hashing, verification, and review decisions checked
against their chained review entries. Pure: no Django.

Each sealed entry carries ``entry_hash = HMAC(key, prev_hash || canonical(fields))``. The
key (derived from the server's secret) means someone who can write to the database but
does not hold the secret cannot recompute a valid chain after changing a row.
"""

import hashlib
import hmac
import json
import re
import uuid
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

    chain_seq: int | None  # None: an entry not sealed yet (only a review disagreement)
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


# A reviewer's decision on a flagged entry is the entry's review columns (outside the hash: they
# change after sealing) and a ``review`` entry whose hashed ``reason`` names the entry and the
# decision, whose hashed ``user_id`` is the reviewer, and whose ``content_hash`` is a MAC
# under the chain's key over the entry, the decision's ordinal among the entry's decisions,
# the state, the reviewer and ``reviewed_at`` (``decision_mac``). The columns must agree with
# the last such entry, or with the state the entry was written in if there is none. The MAC
# is what keeps someone who can write to the database, but holds no key, from inserting a
# review entry of their own (an unsealed one is trusted, and the sealer would chain it) or
# replaying an earlier decision's; the ordinal, from setting an entry back to an earlier one
# while the later review entry stands (deleting it is found once it is sealed).
# The writer (``audit_review_decide``) and ``verify_reviews`` must count the ordinal by one
# rule, or a forged review entry that only one of them counts moves every later genuine
# decision's ordinal and the alarm lands on that genuine entry. The rule: the review entries
# that decide the entry in the exact words of ``review_decision_reason`` and carry its
# ``session_id`` (the writer finds them by that indexed column, and copies it into each
# review entry it writes). The writer decides only flagged entries, and after them, so
# ``verify_reviews`` reports a decision review entry in other words ("entry 07 marked ..."),
# in another session, or naming an entry that is not a flagged one before it, as written by
# no decision (pointing at that review entry) and does not count it.
_DECISION = "entry {entry_id} marked {state}"
_DECISION_RE = re.compile(r"entry ([0-9]+) marked (confirmed|false_positive)")
_OPEN, _NONE = "open", "none"  # a flagged entry's state until decided; anyone else's


def review_decision_reason(*, entry_id: int, state: str) -> str:
    """Return the ``reason`` of the review entry that records ``state`` for ``entry_id``."""
    return _DECISION.format(entry_id=entry_id, state=state)


def decision_mac(
    *,
    key: bytes,
    entry_id: int,
    ordinal: int,
    state: str,
    reviewer_id: object,
    reviewed_at: datetime | None,
) -> str:
    """Return the MAC a review entry carries for the ``ordinal``-th decision on an entry."""
    message = f"review|{entry_id}|{ordinal}|{state}|{reviewer_id}|{_plain(reviewed_at)}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Decision:
    state: str
    reviewer: object
    review_id: object
    mac: str
    ordinal: int


# What ``verify_reviews`` keeps of a flagged or decided entry: its chain_seq, flagged,
# session_id, review_state, reviewed_by and reviewed_at.
_Kept = tuple[int | None, bool, object, object, object, datetime | None]


def verify_reviews(entries: Iterable[Mapping[str, object]], *, key: bytes) -> Broken | None:
    """Check review columns against review entries; return the first entry that disagrees.

    ``entries``, ordered by id (a decision is written under the decided entry's row lock,
    so a later one has a higher id), are every ``review`` entry and every entry whose
    review columns could hold a decision: flagged, or with a review state, a reviewer or a
    review time.
    Each needs ``id``, ``chain_seq``, ``kind``, ``flagged``, ``user_id``, ``session_id``,
    ``reason``, ``content_hash``, ``review_state``, ``reviewed_by_id`` and ``reviewed_at``.
    Keeps a tuple per such entry, not the rows.

    A decision's review entry that no decision wrote (see ``_stray_problem``) is not
    counted, and is itself the problem if no entry before it in id order has one.
    """
    current: dict[int, _Kept] = {}
    decided: dict[int, _Decision] = {}
    stray: Broken | None = None  # the first review entry no decision wrote, and its id
    stray_id = 0
    for entry in entries:
        decision = entry["kind"] == "review" and _DECISION_RE.fullmatch(str(entry["reason"]))
        if decision:
            decided_id = int(decision[1])
            problem = _stray_problem(entry, decided_id, decision[2], current.get(decided_id))
            if problem is None:
                _count_decision(decided, decided_id, decision[2], entry)
            elif stray is None:
                stray_id = int(entry["id"])
                stray = Broken(entry["chain_seq"], stray_id, problem)
        seq, flagged = entry["chain_seq"], bool(entry["flagged"])
        state, reviewer = entry["review_state"], entry["reviewed_by_id"]
        reviewed_at = entry["reviewed_at"]
        if flagged or state != _NONE or reviewer is not None or reviewed_at is not None:
            kept = (seq, flagged, _session_key(entry["session_id"]), state, reviewer, reviewed_at)
            current[int(entry["id"])] = kept
    for entry_id, (seq, flagged, _, state, reviewer, reviewed_at) in current.items():
        # The first problem in id order, as for every other problem: with the stray entry
        # left uncounted, a problem on an entry before it is one of its own, not its echo.
        if stray is not None and entry_id > stray_id:
            return stray
        decision = decided.get(entry_id)
        problem = _review_problem(flagged, state, reviewer, reviewed_at, decision)
        if problem is None and decision is not None:
            problem = _mac_problem(key, entry_id, decision, reviewed_at)
        if problem:
            return Broken(seq, entry_id, problem)
    return stray


def _count_decision(
    decided: dict[int, _Decision], decided_id: int, state: str, entry: Mapping[str, object]
) -> None:
    ordinal = decided[decided_id].ordinal + 1 if decided_id in decided else 1
    mac = str(entry["content_hash"])
    decided[decided_id] = _Decision(state, entry["user_id"], entry["id"], mac, ordinal)


def _stray_problem(
    review: Mapping[str, object], decided_id: int, state: str, decided: _Kept | None
) -> str | None:
    # The writer decides only flagged entries, after them, and copies the entry's session
    # into the review entry; it counts a decision's ordinal by that session and the exact
    # reason. A review entry that does not fit was inserted behind its back, and counting
    # it would move the ordinal of every later genuine decision away from the one the
    # writer MACed.
    reason = str(review["reason"])
    if reason != review_decision_reason(entry_id=decided_id, state=state):
        return (
            f"review entry's reason {reason!r} is not the reason a decision on entry "
            f"{decided_id} writes: no decision wrote it, so it is not counted as one"
        )
    if decided is None or not decided[1]:
        return (
            f"review entry deciding entry {decided_id}, which is not a flagged entry "
            "written before it: no decision wrote it, so it is not counted as one"
        )
    session = review["session_id"]
    if _session_key(session) != decided[2]:
        return (
            f"review entry deciding entry {decided_id} is in session {session}, not in that "
            f"entry's session {_session_name(decided[2])}: no decision wrote it, so it is not "
            "counted as one"
        )
    return None


def _session_key(session_id: object) -> object:
    # A UUID's 128-bit int is kept, not the UUID: some 50 bytes less for every flag held.
    return session_id.int if isinstance(session_id, uuid.UUID) else session_id


def _session_name(key: object) -> object:
    return uuid.UUID(int=key) if isinstance(key, int) else key


def _review_problem(
    flagged: bool,
    state: object,
    reviewer: object,
    reviewed_at: datetime | None,
    decision: _Decision | None,
) -> str | None:
    if decision is None:
        expected_state, expected_reviewer = (_OPEN if flagged else _NONE), None
        source = "no review entry decided it, so it should be"
        if reviewed_at is not None:
            return f"reviewed_at {_plain(reviewed_at)} set: {source} undecided"
    else:
        expected_state, expected_reviewer = decision.state, decision.reviewer
        source = f"its last review entry (id {decision.review_id}) says"
    if state != expected_state:
        return f"review_state {state!r} disagrees: {source} {expected_state!r}"
    if reviewer != expected_reviewer:
        who = "no reviewer" if expected_reviewer is None else f"reviewer {expected_reviewer}"
        return f"reviewed_by {reviewer} disagrees: {source} {who}"
    return None


def _mac_problem(
    key: bytes, entry_id: int, decision: _Decision, reviewed_at: datetime | None
) -> str | None:
    expected = decision_mac(
        key=key,
        entry_id=entry_id,
        ordinal=decision.ordinal,
        state=decision.state,
        reviewer_id=decision.reviewer,
        reviewed_at=reviewed_at,
    )
    if hmac.compare_digest(expected, decision.mac):
        return None
    return (
        f"its last review entry (id {decision.review_id}) does not vouch for this decision "
        f"(decision {decision.ordinal} of the entry): written without the chain's key, a "
        "replayed decision, or reviewed_at changed"
    )
