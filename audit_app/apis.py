"""The audit API: staff read the trail, newest first, with the filters of API.md."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.generics import ListAPIView
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import LoggedUserMixin, PagePagination, errors

from . import selectors
from .serializers import AuditEntryFilterSerializer, AuditEntrySerializer


class AuditEntryListApi(LoggedUserMixin, ListAPIView):
    """Staff only: the audit trail, newest first."""

    permission_classes = [IsAdminUser]
    pagination_class = PagePagination
    serializer_class = AuditEntrySerializer

    def get_queryset(self):
        filters = AuditEntryFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        return selectors.audit_entries_list(
            flagged=data.get("flagged"),
            kind=data.get("kind"),
            username=data.get("user"),
            session_id=data.get("session"),
        )

    @extend_schema(
        operation_id="audit_entries_list",
        parameters=[
            OpenApiParameter("flagged", bool, description="only flagged (or unflagged) entries"),
            OpenApiParameter("kind", str, enum=["message", "reply", "security", "review"]),
            OpenApiParameter("user", str, description="a username"),
            OpenApiParameter("session", str, description="a session id (UUID)"),
        ],
        responses={200: AuditEntrySerializer(many=True), **errors(400, 401, 403, 404, 503)},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)
