"""The stale-turn sweep and the expiry purge: every accepted turn ends, expired data goes."""

import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from sessions_app import services, tasks
from sessions_app.models import ChatSession, Message, Turn

from ..factories import UserFactory
from ..support import post_and_wait


def accepted_turn(user, content: str = "hello") -> Turn:
    """A turn accepted by the API whose task never reached a worker (the broker lost it)."""
    session = services.chat_session_create(owner=user)
    return services.message_accept(user=user, session_id=session.pk, content=content)


def age(turn: Turn, seconds: int) -> None:
    Turn.objects.filter(pk=turn.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))


@pytest.mark.django_db
def test_a_lost_pending_turn_is_requeued_and_completes(user, settings):
    turn = accepted_turn(user)
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 0, "failed": 0, "discarded": 0}
    age(turn, 61)
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 1, "failed": 0, "discarded": 0}
    turn.refresh_from_db()
    assert turn.status == "completed"
    assert Message.objects.filter(turn=turn, role="assistant").count() == 1


@pytest.mark.django_db
def test_a_turn_stuck_running_past_its_budget_fails_with_the_message_kept(user, settings):
    turn = accepted_turn(user, "keep me")
    Turn.objects.filter(pk=turn.pk).update(status="running", attempts=settings.TURN_MAX_ATTEMPTS)
    age(turn, 500)
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 0, "failed": 1, "discarded": 0}
    turn.refresh_from_db()
    assert turn.status == "failed" and turn.error_code == "stalled" and turn.error_detail
    assert turn.finished_at is not None
    assert list(Message.objects.filter(turn=turn).values_list("role", "content")) == [
        ("user", "keep me")
    ]


@pytest.mark.django_db
def test_finished_turns_are_left_alone(user):
    turn = accepted_turn(user)
    services.turn_fail(turn_id=turn.pk, code="x", detail="y")
    age(turn, 500)
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 0, "failed": 0, "discarded": 0}


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweepers_requeue_each_turn_once(fake_claude):
    turns = [accepted_turn(UserFactory(), f"CANARY-{i}") for i in range(8)]
    for turn in turns:
        age(turn, 500)
    fake_claude.default_delay = 0.2  # keeps the sweeps overlapping
    totals: list[dict[str, int]] = []

    def sweep() -> None:
        try:
            totals.append(tasks.turns_sweep(older_than_seconds=60))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(t["requeued"] for t in totals) == len(turns)
    assert fake_claude.request_count() == len(turns)
    for turn in turns:
        turn.refresh_from_db()
        assert turn.status == "completed"
        assert Message.objects.filter(turn=turn, role="assistant").count() == 1


@pytest.mark.django_db
def test_sweep_command_reports_what_it_did(user, capsys):
    age(accepted_turn(user), 500)
    call_command("sweep_stale_turns", "--older-than", "60")
    assert "re-queued 1, failed 0" in capsys.readouterr().out


@pytest.mark.django_db
def test_purge_expired_erases_expired_sessions_and_their_messages(user, other_user, capsys):
    old = accepted_turn(user).session
    live = accepted_turn(other_user).session
    ChatSession.objects.filter(pk=old.pk).update(expires_at=timezone.now())
    call_command("purge_expired")
    assert "erased 1 expired sessions" in capsys.readouterr().out
    assert not ChatSession.objects.filter(pk=old.pk).exists()
    assert not Message.objects.filter(session_id=old.pk).exists()
    assert not Turn.objects.filter(session_id=old.pk).exists()
    assert Message.objects.filter(session_id=live.pk).count() == 1


@pytest.mark.django_db
def test_a_session_expires_session_ttl_seconds_after_its_last_message(api, settings, capsys):
    """The purge tests above expire sessions by hand; this one lets the setting do it."""
    settings.SESSION_TTL_SECONDS = 1
    sid, _ = post_and_wait(api, "hello")
    session = ChatSession.objects.get(pk=sid)
    assert session.expires_at - session.last_activity_at == timedelta(seconds=1)
    assert api.get(f"/api/v1/sessions/{sid}/").status_code == 200
    time.sleep(max(0.0, (session.expires_at - timezone.now()).total_seconds()) + 0.05)
    assert api.get(f"/api/v1/sessions/{sid}/").status_code == 404
    call_command("purge_expired")
    assert "erased 1 expired sessions" in capsys.readouterr().out
    assert not Message.objects.filter(session_id=sid).exists()


def test_beat_runs_the_sweep_the_purge_and_the_audit_seal(settings):
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert tasks == {
        "sessions_app.tasks.sweep_stale_turns",
        "sessions_app.tasks.purge_expired_sessions",
        "audit_app.tasks.seal_audit_chain",
    }
    from isolation_site.celery import app

    assert set(app.conf.beat_schedule) == set(settings.CELERY_BEAT_SCHEDULE)


@pytest.mark.django_db
def test_a_stuck_turn_does_not_block_its_session_forever_without_beat(api, user, settings):
    """No sweep running (the embedded setup): the next message ends the stale turn itself."""
    turn = accepted_turn(user, "lost")
    response = api.post(
        f"/api/v1/sessions/{turn.session_id}/messages/", {"content": "too soon"}, format="json"
    )
    assert response.status_code == 409
    age(turn, settings.STALE_TURN_SECONDS + 1)
    response = api.post(
        f"/api/v1/sessions/{turn.session_id}/messages/?wait=5", {"content": "hello?"}, format="json"
    )
    assert response.status_code == 200 and response.json()["status"] == "completed"
    turn.refresh_from_db()
    assert turn.status == "failed" and turn.error_code == "stalled"


@pytest.mark.django_db
def test_a_requeued_turn_gets_a_fresh_deadline(user, fake_claude, settings):
    """A turn lost for longer than its deadline is re-run for real, not failed at once."""
    turn = accepted_turn(user)
    long_ago = timezone.now() - timedelta(seconds=settings.TURN_DEADLINE_SECONDS * 3)
    Turn.objects.filter(pk=turn.pk).update(
        created_at=long_ago, deadline_at=long_ago, updated_at=long_ago
    )
    assert tasks.turns_sweep(older_than_seconds=60) == {"requeued": 1, "failed": 0, "discarded": 0}
    turn.refresh_from_db()
    assert turn.status == "completed", (turn.error_code, turn.error_detail)
    assert fake_claude.request_count() == 1


@pytest.mark.django_db
def test_without_beat_requests_run_the_purge_and_the_seal_now_and_then(api, user, settings):
    """The embedded default (eager tasks, no beat): expired sessions do not stay for good."""
    from audit_app.models import AuditEntry

    assert settings.CELERY_TASK_ALWAYS_EAGER
    old = accepted_turn(user).session
    ChatSession.objects.filter(pk=old.pk).update(expires_at=timezone.now())
    assert AuditEntry.objects.filter(chain_seq__isnull=True).exists()
    assert api.post("/api/v1/sessions/", {}, format="json").status_code == 201
    assert not ChatSession.objects.filter(pk=old.pk).exists()
    assert not Message.objects.filter(session_id=old.pk).exists()
    assert not AuditEntry.objects.filter(chain_seq__isnull=True).exists()  # sealed
    # At most once per period: a second expired session waits for the next one.
    newer = accepted_turn(user).session
    ChatSession.objects.filter(pk=newer.pk).update(expires_at=timezone.now())
    api.post("/api/v1/sessions/", {}, format="json")
    assert ChatSession.objects.filter(pk=newer.pk).exists()


@pytest.mark.django_db
def test_without_beat_requests_run_the_sweep_now_and_then(api, user, settings):
    """The embedded default: a turn whose run was lost (the server stopped mid-turn) is
    re-run by the in-line sweep, without its user posting to that chat again."""
    assert settings.CELERY_TASK_ALWAYS_EAGER
    turn = accepted_turn(user, "lost")
    age(turn, settings.STALE_TURN_SECONDS + 1)
    assert api.post("/api/v1/sessions/", {}, format="json").status_code == 201
    turn.refresh_from_db()
    assert turn.status == "completed"
    # At most once per period: another lost turn waits for the next one.
    later = accepted_turn(user, "lost too")
    age(later, settings.STALE_TURN_SECONDS + 1)
    api.post("/api/v1/sessions/", {}, format="json")
    later.refresh_from_db()
    assert later.status == "pending"
