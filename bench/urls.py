"""The baselines of ARCHITECTURE.md's hot-path goal.

``bare``: token auth, one owned fetch, one insert (the goal's yardstick). ``floor``: what
any turn costs in the frameworks alone, whatever the service does inside them: token
auth, one owned fetch, a Celery task sent, the worker's SDK call to Claude, the waiter
woken through the process's pub/sub listener. None of a turn's promises (turn row,
history, PII, scan, reply, audit) is kept, so a turn costs at least this, less the
owned fetch, which a turn's accept folds into its one ``UPDATE``. ``sql``: the floor plus
the turn's statements, and nothing else (``bench/statements.py``); ``merged``: the same
with each transaction's statements merged into one.
"""

import os
import uuid
from collections.abc import Callable
from contextlib import closing

from django.db import IntegrityError
from django.urls import path
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.views import APIView

from audit_app.models import AuditEntry
from bench import statements, step_probe
from bench.tasks import floor_turn, statements_turn
from core import sql
from core.ids import as_uuid
from isolation_site.urls import urlpatterns as site_urlpatterns
from sessions_app.events.notify import turn_changes
from sessions_app.models import TURN_ONE_IN_FLIGHT
from sessions_app.selectors import chat_session_get_for_owner

if os.environ.get("BENCH_STEP_PROBE"):  # bench/turn_throughput.py --probe
    step_probe.install(os.environ["BENCH_STEP_PROBE"])


class BareApi(APIView):
    def post(self, request, session_id: str) -> Response:
        session = chat_session_get_for_owner(user=request.user, session_id=session_id)
        AuditEntry.objects.create(kind="message", user=request.user, session_id=session.pk)
        return Response({"ok": True}, status=201)


def _woken(job: uuid.UUID, send: Callable[[], object]) -> str | None:
    """Subscribe to ``job``'s changes, then ``send()`` its task (subscribed first, as a
    turn's ?wait is, so the wake-up is not missed); return the first status told, or None
    after 30 s."""
    with closing(turn_changes(turn_id=job, timeout=30)) as changes:
        next(changes)
        send()
        return next((status for status in changes if status is not None), None)


def _answer(status: str | None) -> Response:
    if status is None:
        return Response({"status": "timeout"}, status=504)
    return Response({"status": status}, status=200 if status == "completed" else 502)


class FloorApi(APIView):
    def post(self, request, session_id: str) -> Response:
        chat_session_get_for_owner(user=request.user, session_id=session_id)
        job, content = uuid.uuid4(), str(request.data.get("content", ""))
        return _answer(_woken(job, lambda: floor_turn.delay(str(job), content)))


class StatementsApi(APIView):
    # The ``merged`` phase: each transaction's statements merged into one.
    merged = False

    def post(self, request, session_id: str) -> Response:
        sid, user_id = as_uuid(session_id), request.user.pk
        content = str(request.data.get("content", ""))
        accept = statements.accept_merged if self.merged else statements.accept
        try:
            turn_id = sid and accept(
                user_id=user_id, session_id=sid, content=content, now=timezone.now()
            )
        except IntegrityError as exc:  # a turn of the session still in flight: a turn's 409
            if sql.violated_constraint(exc) != TURN_ONE_IN_FLIGHT:
                raise
            return Response({"status": "in flight"}, status=409)
        if not turn_id:
            return Response({"status": "not found"}, status=404)
        send = lambda: statements_turn.delay(str(turn_id), content, self.merged)  # noqa: E731
        if _woken(turn_id, send) is None:
            return _answer(None)
        return _answer(
            statements.reread(user_id=user_id, session_id=sid, turn_id=turn_id, now=timezone.now())
        )


urlpatterns = [
    path("bench/bare/<str:session_id>/", BareApi.as_view()),
    path("bench/floor/<str:session_id>/", FloorApi.as_view()),
    path("bench/sql/<str:session_id>/", StatementsApi.as_view()),
    path("bench/merged/<str:session_id>/", StatementsApi.as_view(merged=True)),
    *site_urlpatterns,
]
