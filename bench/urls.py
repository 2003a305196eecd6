"""The baseline of ARCHITECTURE.md's hot-path goal: token auth, one owned fetch, one insert."""

from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from audit_app.models import AuditEntry
from isolation_site.urls import urlpatterns as site_urlpatterns
from sessions_app.selectors import chat_session_get_for_owner


class BareApi(APIView):
    def post(self, request, session_id: str) -> Response:
        session = chat_session_get_for_owner(user=request.user, session_id=session_id)
        AuditEntry.objects.create(kind="message", user=request.user, session_id=session.pk)
        return Response({"ok": True}, status=201)


urlpatterns = [path("bench/bare/<str:session_id>/", BareApi.as_view()), *site_urlpatterns]
