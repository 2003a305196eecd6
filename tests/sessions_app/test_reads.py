"""The reads every turn makes, both ways they are taken: Postgres's statements written out
(``sessions_app.rows``) and the ORM's. Both answer the same and gate by owner and expiry
the same, in the same two statements."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.exceptions import NotFound

from sessions_app import selectors
from sessions_app.errors import ForeignAccess
from sessions_app.models import ChatSession
from sessions_app.queries import turn_history
from sessions_app.stores import SessionRef, history_store
from sessions_app.stores.db import _ALL, _OF_TURN

from ..conftest import as_written
from ..fakes.claude import FakeClaude
from ..support import post_and_wait

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("vendor")]

SECRET = "I am Alice Johnson, write to alice.johnson@example.com."


@pytest.fixture
def answered(settings, api, fake_claude: FakeClaude) -> tuple[str, dict]:
    settings.PII_MODE = "pseudonymize"  # the read must bring the vault along
    sid, _ = post_and_wait(api, "Hello there")
    return sid, post_and_wait(api, SECRET, sid)[1]


def test_the_owner_reads_the_turn_with_its_exchange_restored(answered, user):
    sid, posted = answered
    turn = selectors.turn_get_for_owner(user=user, turn_id=posted["id"])
    assert (str(turn.pk), str(turn.session_id), turn.status) == (posted["id"], sid, "completed")
    assert (turn.session.pk, turn.session.owner_id) == (turn.session_id, user.pk)
    assert [(m.seq, m.role, m.content) for m in turn.exchange] == [
        (3, "user", SECRET),
        (4, "assistant", f"Echo: {SECRET}"),
    ]
    assert turn.created_at.tzinfo is not None and turn.finished_at >= turn.created_at


def test_another_users_turn_is_the_not_found_that_is_audited(answered, other_user):
    sid, posted = answered
    with pytest.raises(ForeignAccess) as refused:
        selectors.turn_get_for_owner(user=other_user, turn_id=posted["id"])
    assert (refused.value.user_id, str(refused.value.session_id)) == (other_user.pk, sid)


def test_a_turn_of_an_expired_session_is_not_found(answered, user):
    sid, posted = answered
    ChatSession.objects.filter(pk=sid).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(NotFound) as refused:
        selectors.turn_get_for_owner(user=user, turn_id=posted["id"])
    assert not isinstance(refused.value, ForeignAccess)  # the owner's own: not audited


def test_a_read_is_two_statements_the_vault_joined_to_the_turn(answered, user):
    _, posted = answered
    with CaptureQueriesContext(connection) as read:
        selectors.turn_get_for_owner(user=user, turn_id=posted["id"])
    [turn_and_vault, messages] = [q["sql"] for q in read]
    assert 'FROM "sessions_app_turn"' in turn_and_vault
    assert 'JOIN "sessions_app_sessionvault"' in turn_and_vault
    assert 'FROM "sessions_app_message"' in messages


# The ORM's fallback answers the same (the tests above): only the SQL that ran tells which
# way was taken, and on Postgres it must be the written-out way.
@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)
def test_on_postgres_a_turn_is_read_by_the_written_out_statements(answered, user):
    _, posted = answered
    with CaptureQueriesContext(connection) as read:
        selectors.turn_get_for_owner(user=user, turn_id=posted["id"])
    assert as_written(read, selectors._TURN_OWNED, _OF_TURN) == [selectors._TURN_OWNED, _OF_TURN]


@pytest.mark.parametrize("vendor", ["postgresql"], indirect=True)
def test_on_postgres_the_history_is_read_by_the_written_out_statement(settings, answered, user):
    settings.HISTORY_STORE = "db"
    _, posted = answered
    turn = selectors.turn_get_for_owner(user=user, turn_id=posted["id"])
    with CaptureQueriesContext(connection) as read:
        turn_history(turn=turn)
    assert as_written(read, _ALL) == [_ALL]


def test_the_stores_reads_are_the_owners_only(answered, user, other_user):
    sid, posted = answered
    turn = selectors.turn_get_for_owner(user=user, turn_id=posted["id"])
    history = turn_history(turn=turn)
    assert [m.seq for m in history] == [1, 2, 3]  # up to the turn's own message
    assert {(m.user_id, str(m.session_id)) for m in history} == {(user.pk, sid)}
    mine = SessionRef(pk=turn.session_id, owner_id=user.pk)
    theirs = SessionRef(pk=turn.session_id, owner_id=other_user.pk)
    assert len(history_store().turn_messages(session=mine, turn_id=turn.pk)) == 2
    assert history_store().turn_messages(session=theirs, turn_id=turn.pk) == []


def _converted_on_reading(model) -> list[str]:
    """The fields Django converts on reading ``model`` from this database."""
    return [
        field.name
        for field in model._meta.concrete_fields
        if field.get_db_converters(connection)
        or connection.ops.get_db_converters(field.get_col(model._meta.db_table))
    ]


def test_no_model_built_from_a_written_out_row_needs_converting():
    """``rows`` builds models from the values Postgres's driver returns: a field Django
    converts on reading (a JSONField, say) would come through raw."""
    from django.contrib.auth import get_user_model
    from knox.models import AuthToken

    from audit_app.models import AuditEntry
    from sessions_app.models import Message, SessionVault, Turn

    assert _converted_on_reading(AuditEntry) == ["evidence"]  # the check sees one
    built = (Turn, ChatSession, SessionVault, Message, AuthToken, get_user_model())
    assert {model.__name__: _converted_on_reading(model) for model in built} == {
        model.__name__: [] for model in built
    }
