"""``core.sql``: the INSERT built once stores what ``Model.save`` stores, and fails as it
fails.

Each model the hot path writes through it is checked field by field against the ORM's own
saving of the same instance, on Postgres (the written-out statement) and the other way
(``vendor``: the ORM's save that SQLite takes).
"""

import uuid

import pytest
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit_app.models import AuditEntry
from core import sql
from sessions_app.models import Message, Turn
from sessions_app.services import chat_session_create
from tests.conftest import as_written
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _row(obj) -> dict:
    """What the database holds for ``obj``, read back by the ORM."""
    row = type(obj).objects.filter(pk=obj.pk).values().get()
    return {
        name: bytes(value) if isinstance(value, memoryview) else value
        for name, value in row.items()
    }


DEADLINE = timezone.now()


def _instances(session) -> list:
    """One of each model the hot path inserts, every field given a value of its own kind
    (a dict for the JSON field, bytes for the binary one, None where a field allows it)."""
    turn_id = uuid.uuid4()
    return [
        Turn(id=turn_id, session=session, deadline_at=DEADLINE, withheld=b"\x00sealed"),
        Message(session=session, turn_id=turn_id, seq=1, role="user", content="Hi é", status="ok"),
        AuditEntry(
            kind=AuditEntry.Kind.REPLY,
            user_id=session.owner_id,
            session_id=session.pk,
            turn_id=turn_id,
            role="assistant",
            content_hash="ab" * 32,
            token_count=3,
            flagged=True,
            reason="leak",
            evidence={"score_pct": 70, "items": [{"start": 0, "end": 4}]},
            review_state=AuditEntry.ReviewState.OPEN,
        ),
    ]


def test_it_stores_what_the_orm_stores_field_by_field(user, vendor, monkeypatch):
    session = chat_session_create(owner=user)
    written = _instances(session)
    saved_by_the_orm = []
    orm_insert = Model._do_insert
    monkeypatch.setattr(
        Model, "_do_insert", lambda *a, **k: saved_by_the_orm.append(1) or orm_insert(*a, **k)
    )
    with CaptureQueriesContext(connection) as captured:
        for obj in written:
            assert sql.insert(obj) is obj
    # The statement built once is, word for word, the one the ORM sends; on Postgres it runs
    # without the ORM's saving, elsewhere the ORM saves.
    statements = [sql._statement(type(obj)).sql for obj in written]
    assert [q for q in as_written(captured, *statements) if q.startswith("INSERT")] == statements
    assert len(saved_by_the_orm) == (0 if vendor == "postgresql" else 3)
    other = chat_session_create(owner=user)
    for obj, twin in zip(written, _instances(other), strict=True):
        assert obj.pk is not None and not obj._state.adding
        twin.save(force_insert=True)
        mine, theirs = _row(obj), _row(twin)
        for name in mine:
            if name in ("id", "session_id", "turn_id", "created_at", "updated_at"):
                continue  # its own key and session, its own moment
            assert mine[name] == theirs[name], name
        # The instance holds what was stored: the ORM sets auto_now(_add) on it, so does this.
        for name, value in mine.items():
            assert getattr(obj, name) == value, name


def test_the_fields_sent_unprepared_need_no_preparing(user):
    """A field sent as the model holds it is one whose own preparing gives it back as is."""
    for obj in _instances(chat_session_create(owner=user)):
        statement = sql._statement(type(obj))
        statement.params(obj)  # sets auto_now(_add), as saving does
        fields = {field.attname: field for field in type(obj)._meta.concrete_fields}
        as_is = [name for name, prep in statement.values if prep is None]
        assert as_is, type(obj)
        for name in as_is:
            field, value = fields[name], getattr(obj, name)
            assert field.get_db_prep_save(value, connection) == value, name


def test_a_violation_is_djangos_integrity_error_and_spoils_the_transaction(user, vendor):
    session = chat_session_create(owner=user)
    turn = sql.insert(Turn(session=session))
    sql.insert(Message(session=session, turn=turn, seq=1, role="user", content="a"))
    with pytest.raises(IntegrityError), transaction.atomic():
        try:
            sql.insert(Message(session=session, turn=turn, seq=1, role="user", content="b"))
        except IntegrityError:
            assert transaction.get_rollback()  # as the ORM's save leaves it
            raise
    assert list(Message.objects.filter(turn=turn).values_list("content", flat=True)) == ["a"]


def test_a_key_the_database_assigns_is_refused_when_given():
    """The ORM would insert a given key; the statement built once leaves the key out."""
    session = chat_session_create(owner=UserFactory())
    turn = sql.insert(Turn(session=session))
    message = Message(id=987654321, session=session, turn=turn, seq=1, role="user", content="a")
    with pytest.raises(ValueError, match="the database's to assign"):
        sql.insert(message)
    saved = sql.insert(Message(session=session, turn=turn, seq=1, role="user", content="a"))
    with pytest.raises(ValueError):
        sql.insert(saved)  # twice: the ORM's force_insert would fail on the key too
    assert Message.objects.filter(turn=turn).count() == 1


class _Lowered(models.CharField):
    def get_prep_value(self, value):
        return super().get_prep_value(value).lower()


def test_a_subclass_of_a_plain_field_is_prepared_as_its_own_kind():
    """Only the plain field classes go unprepared: a subclass may prepare its own way."""
    assert sql._as_is(Message._meta.get_field("content"))
    assert sql._as_is(Message._meta.get_field("session"))  # a UUID key points to a UUIDField
    assert not sql._as_is(_Lowered(max_length=3))
    assert not sql._as_is(AuditEntry._meta.get_field("evidence"))
