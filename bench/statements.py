"""A turn's SQL statements and nothing else: the ``sql`` and ``merged`` phases of
``bench/turn_throughput.py``.

What the floor does (token auth, a Celery task with a late ack, the worker's SDK call, the
waiter woken through pub/sub) plus the 11 statements a chat turn runs on Postgres, in the
turn's transactions: the accept's ``UPDATE ... RETURNING`` of the session and its three
INSERTs (turn, message, audit entry), the claim, the history read, the end's ``UPDATE``
with its two INSERTs (reply, audit entry), and the wait's re-read of the turn and its
messages. They are the service's own statements (``core.sql`` for the INSERTs). What
runs around them is as little Python as can run them: no ORM, no PII, no scan, no
fingerprints, no throttle, no wait slots, no serializer. So a turn that keeps these
promises cannot run faster than this phase in these frameworks, however little its own
code costs.

The ``merged`` phase runs the same writes with each transaction's statements merged into
one (the accept's ``UPDATE`` and three INSERTs one statement of data-modifying CTEs, the
end's two ``UPDATE``s and two INSERTs another), each in autocommit, with no ``BEGIN`` and
``COMMIT`` around it: 6 statements instead of 11 and two transactions' round trips fewer,
what merging across the history store's and the audit log's boundaries could save at best.
"""

import functools
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model

from audit_app.holds import leak_hold_params
from audit_app.models import AuditEntry
from core import sql
from sessions_app import rows, selectors, services
from sessions_app.models import FENCE_SEQUENCE, ChatSession, Message, Turn
from sessions_app.stores import db as db_store

# A constant in place of each message's hash: hashing is the service's Python, not SQL.
_HASH = "0" * 64


def _column(model: type[Model], attname: str) -> int:
    """Where ``attname`` stands in a row of ``rows.columns`` of ``model``."""
    return [field.attname for field in model._meta.concrete_fields].index(attname)


_NEXT_SEQ, _OWNER = _column(ChatSession, "next_seq"), _column(ChatSession, "owner_id")
_STATUS, _TURN_FIELDS = _column(Turn, "status"), len(Turn._meta.concrete_fields)


class _Insert:
    """The service's written-out INSERT of ``model`` (``core.sql``), its values taken
    from keywords over the fields' defaults (made ready for the database once), with no
    model instance built."""

    def __init__(self, model: type[Model]) -> None:
        self.statement = sql._statement(model)
        fields = {field.attname: field for field in model._meta.concrete_fields}
        self.defaults = {
            name: fields[name].get_db_prep_save(fields[name].get_default(), connection)
            for name, _ in self.statement.values
        }

    def run(self, **values: object) -> None:
        row = {**self.defaults, **values}
        with connection.cursor() as cursor:
            cursor.execute(self.statement.sql, [row[name] for name, _ in self.statement.values])


@functools.cache
def _inserts() -> dict[str, _Insert]:
    return {"turn": _Insert(Turn), "message": _Insert(Message), "audit": _Insert(AuditEntry)}


def accept(*, user_id: int, session_id: uuid.UUID, content: str, now: datetime) -> uuid.UUID | None:
    """The accept's four statements in one transaction; the new turn's id, or None if the
    session is not the user's live one."""
    turn_id = uuid.uuid4()
    expires = now + timedelta(seconds=settings.SESSION_TTL_SECONDS)
    deadline = now + timedelta(seconds=settings.TURN_DEADLINE_SECONDS)
    insert = _inserts()
    with transaction.atomic():
        session = rows.one(selectors._TAKE_SEQ, [now, expires, session_id, user_id, now])
        if session is None:
            return None
        seq = session[_NEXT_SEQ] - 1
        common = {"created_at": now, "session_id": session_id, "turn_id": turn_id}
        insert["turn"].run(
            id=turn_id, session_id=session_id, created_at=now, updated_at=now, deadline_at=deadline
        )
        insert["message"].run(**common, seq=seq, role="user", content=content, status="ok")
        insert["audit"].run(
            **common, kind="message", user_id=user_id, role="user", content_hash=_HASH
        )
    return turn_id


def claim(turn_id: uuid.UUID, now: datetime) -> tuple[uuid.UUID, int] | None:
    """The claim and the history read: the turn's session and owner, or None if it ended."""
    params = [Turn.Status.RUNNING.value, now, now, turn_id, *leak_hold_params()]
    row = rows.one(services.turns._START_SQL, params)
    if row is None:
        return None
    session_id, owner_id = row[_TURN_FIELDS], row[_TURN_FIELDS + _OWNER]
    rows.many(db_store._ALL, [session_id, owner_id])
    return session_id, owner_id


def end(turn_id: uuid.UUID, reply: str, now: datetime) -> bool:
    """The end's three statements in one transaction; False if the turn had ended."""
    insert = _inserts()
    params = [turn_id, Turn.Status.COMPLETED.value, None, now, now, turn_id]
    with transaction.atomic():
        row = rows.one(services.reply._END_SQL, params)
        if row is None:
            return False
        session_id, owner_id = row[_TURN_FIELDS], row[_TURN_FIELDS + _OWNER]
        seq = row[_TURN_FIELDS + _NEXT_SEQ] - 1
        common = {"created_at": now, "session_id": session_id, "turn_id": turn_id}
        insert["message"].run(**common, seq=seq, role="assistant", content=reply, status="ok")
        insert["audit"].run(
            **common, kind="reply", user_id=owner_id, role="assistant", content_hash=_HASH
        )
    return True


def reread(*, user_id: int, session_id: uuid.UUID, turn_id: uuid.UUID, now: datetime) -> str:
    """The wait's re-read of the ended turn (with its vault) and its messages: its status."""
    turn = rows.one(selectors._TURN_OWNED, [turn_id, user_id, now])
    rows.many(db_store._OF_TURN, [session_id, user_id, turn_id])
    return turn[_STATUS] if turn else "gone"


def _selected(model: type[Model], computed: dict[str, str]) -> tuple[str, list[str]]:
    """``INSERT INTO`` ``model``'s table ``SELECT`` its values ``FROM`` the CTE the
    ``computed`` expressions read; the SQL and the names of the parameters it takes."""
    statement = sql._statement(model)
    head = statement.sql.split(" VALUES ")[0]
    names = [name for name, _ in statement.values]
    selected = ", ".join(computed.get(name, "%s") for name in names)
    return f"{head} SELECT {selected}", [name for name in names if name not in computed]


@functools.cache
def _merged() -> dict[str, tuple[str, list[list[str]]]]:
    """The accept's and the end's statements, each transaction's one statement."""
    seq = {"seq": "s.next_seq - 1"}
    turn, turn_names = _selected(Turn, {})
    message, message_names = _selected(Message, seq)
    audit, audit_names = _selected(AuditEntry, {})
    accept = (
        f"WITH s AS ({selectors._TAKE_SEQ}),\n"
        f"t AS ({turn} FROM s RETURNING 1),\n"
        f"m AS ({message} FROM s RETURNING 1),\n"
        f"a AS ({audit} FROM s RETURNING 1)\n"
        "SELECT s.next_seq FROM s"
    )
    ended = {"session_id": "e.session_id", "seq": "e.next_seq - 1"}
    reply, reply_names = _selected(Message, ended)
    reply_audit, reply_audit_names = _selected(
        AuditEntry, {"session_id": "e.session_id", "user_id": "e.owner_id"}
    )
    # The service's end (``services.reply._END_SQL``: the session's UPDATE in a CTE, then
    # the turn's), the turn's UPDATE made a CTE too, returning what the INSERTs take.
    head, update = services.reply._END_SQL.split("\n    UPDATE", 1)
    returning = f't."session_id", s."owner_id", s."next_seq", nextval(\'{FENCE_SEQUENCE}\')'
    update = f"UPDATE{update.split('RETURNING')[0]}RETURNING {returning}"
    end = (
        f"{head},\ne AS ({update}),\n"
        f"m AS ({reply} FROM e RETURNING 1),\n"
        f"a AS ({reply_audit} FROM e RETURNING 1)\n"
        "SELECT e.session_id FROM e"
    )
    return {
        "accept": (accept, [turn_names, message_names, audit_names]),
        "end": (end, [reply_names, reply_audit_names]),
    }


def _values(kind: str, names: list[str], /, **values: object) -> list[object]:
    row = {**_inserts()[kind].defaults, **values}
    return [row[name] for name in names]


def accept_merged(
    *, user_id: int, session_id: uuid.UUID, content: str, now: datetime
) -> uuid.UUID | None:
    """``accept`` as one statement."""
    turn_id = uuid.uuid4()
    expires = now + timedelta(seconds=settings.SESSION_TTL_SECONDS)
    deadline = now + timedelta(seconds=settings.TURN_DEADLINE_SECONDS)
    statement, (turn, message, audit) = _merged()["accept"]
    common = {"created_at": now, "session_id": session_id, "turn_id": turn_id}
    params = [
        now,
        expires,
        session_id,
        user_id,
        now,
        *_values(
            "turn",
            turn,
            id=turn_id,
            session_id=session_id,
            created_at=now,
            updated_at=now,
            deadline_at=deadline,
        ),
        *_values("message", message, **common, role="user", content=content, status="ok"),
        *_values(
            "audit",
            audit,
            **common,
            kind="message",
            user_id=user_id,
            role="user",
            content_hash=_HASH,
        ),
    ]
    # One statement: atomic in autocommit, with no BEGIN and COMMIT to send.
    return turn_id if rows.one(statement, params) else None


def end_merged(turn_id: uuid.UUID, reply: str, now: datetime) -> bool:
    """``end`` as one statement."""
    statement, (message, audit) = _merged()["end"]
    common = {"created_at": now, "turn_id": turn_id}
    params = [
        turn_id,
        Turn.Status.COMPLETED.value,
        None,
        now,
        now,
        turn_id,
        *_values("message", message, **common, role="assistant", content=reply, status="ok"),
        *_values("audit", audit, **common, kind="reply", role="assistant", content_hash=_HASH),
    ]
    return rows.one(statement, params) is not None
