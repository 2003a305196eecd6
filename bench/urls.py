"""The baselines of ARCHITECTURE.md's hot-path goal.

``bare``: token auth, one owned fetch, one insert (the goal's yardstick). ``floor``: what
any turn costs in the frameworks alone, whatever the service does inside them: token
auth, one owned fetch, a Celery task sent, the worker's SDK call to Claude, the waiter
woken through the process's pub/sub listener. None of a turn's promises (turn row,
history, PII, scan, reply, audit) is kept, so a turn costs at least this, less the
owned fetch, which a turn's accept folds into its one ``UPDATE``.
"""

import uuid
from contextlib import closing

from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from audit_app.models import AuditEntry
from bench.tasks import floor_turn
from isolation_site.urls import urlpatterns as site_urlpatterns
from sessions_app.events.notify import turn_changes
from sessions_app.selectors import chat_session_get_for_owner


class BareApi(APIView):
    def post(self, request, session_id: str) -> Response:
        session = chat_session_get_for_owner(user=request.user, session_id=session_id)
        AuditEntry.objects.create(kind="message", user=request.user, session_id=session.pk)
        return Response({"ok": True}, status=201)


class FloorApi(APIView):
    def post(self, request, session_id: str) -> Response:
        chat_session_get_for_owner(user=request.user, session_id=session_id)
        job = uuid.uuid4()
        # Subscribed before the task is sent, as a turn's ?wait is, so the wake-up is not missed.
        with closing(turn_changes(turn_id=job, timeout=30)) as changes:
            next(changes)
            floor_turn.delay(str(job), str(request.data.get("content", "")))
            for status in changes:
                if status is not None:
                    code = 200 if status == "completed" else 502
                    return Response({"status": status}, status=code)
        return Response({"status": "timeout"}, status=504)


urlpatterns = [
    path("bench/bare/<str:session_id>/", BareApi.as_view()),
    path("bench/floor/<str:session_id>/", FloorApi.as_view()),
    *site_urlpatterns,
]
