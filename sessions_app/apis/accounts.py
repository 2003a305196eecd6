"""Signing in and out, and the caller's sessions."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import (
    RETRY_AFTER,
    ErrorSerializer,
    LoggedUserMixin,
    PagePagination,
    errors,
)

from .. import selectors, services, tasks, tokens
from ..serializers import (
    SessionCreateSerializer,
    SessionSerializer,
    TokenRequestSerializer,
    TokenSerializer,
)
from .common import (
    SESSION_ID,
)


class AuthTokenApi(LoggedUserMixin, APIView):
    def get_authenticators(self) -> list:
        # Signing in reads the credentials in the body: a client holding an expired or
        # revoked token must still get a new one. Signing out names the token itself.
        # (The schema generator asks before it has a request.)
        if getattr(self.request, "method", None) == "POST":
            return []
        return [tokens.TokenAuthentication()]

    def get_permissions(self) -> list:
        return [] if getattr(self.request, "method", None) == "POST" else super().get_permissions()

    @extend_schema(
        request=TokenRequestSerializer,
        parameters=[RETRY_AFTER],
        responses={
            200: TokenSerializer,
            **errors(400, 413, 503),
            429: OpenApiResponse(
                ErrorSerializer, description="Too many failed sign-ins; see Retry-After."
            ),
        },
        auth=[],
    )
    def post(self, request: Request) -> Response:
        """Sign in: a new API token for the username and password, and when it expires.

        Each sign-in issues a new token; earlier ones stay valid until they expire or are
        signed out. Past the failed-sign-in limit, 429 with `Retry-After`, right or wrong.
        """
        data = TokenRequestSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        key, expires_at = tokens.auth_token_issue(user=data.validated_data["user"])
        return Response(TokenSerializer({"token": key, "expires_at": expires_at}).data)

    @extend_schema(request=None, responses={204: None, **errors(400, 401, 503)})
    def delete(self, request: Request) -> Response:
        """Sign the calling token out: it gets 401 from then on; other tokens stay valid."""
        tokens.auth_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionListCreateApi(LoggedUserMixin, GenericAPIView):
    serializer_class = SessionSerializer
    pagination_class = PagePagination

    def get_queryset(self):
        return selectors.chat_session_list_for_owner(user=self.request.user)

    @extend_schema(
        responses={
            200: SessionSerializer(many=True),
            **errors(400, 401, 503),
            404: OpenApiResponse(ErrorSerializer, description="No such page."),
        }
    )
    def get(self, request: Request) -> Response:
        """List the caller's live sessions, a page at a time (`?page=N`)."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(SessionSerializer(page, many=True).data)

    @extend_schema(
        request=SessionCreateSerializer,
        responses={201: SessionSerializer, **errors(400, 401, 413, 503)},
    )
    def post(self, request: Request) -> Response:
        """Start a session (a conversation) owned by the caller, with an optional title."""
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tasks.beat_jobs_if_due()
        session = services.chat_session_create(owner=request.user, **data.validated_data)
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionDetailApi(LoggedUserMixin, APIView):
    @extend_schema(
        parameters=[SESSION_ID], responses={200: SessionSerializer, **errors(400, 401, 404, 503)}
    )
    def get(self, request: Request, session_id: str) -> Response:
        """Read one of the caller's sessions; anyone else's, or an expired one, is 404."""
        session = selectors.chat_session_get_for_owner(
            user=request.user, session_id=session_id, with_vault=True
        )
        return Response(SessionSerializer(session).data)

    @extend_schema(parameters=[SESSION_ID], responses={204: None, **errors(400, 401, 404, 503)})
    def delete(self, request: Request, session_id: str) -> Response:
        """Delete the session: its content is erased everywhere it is kept, its turn stops."""
        services.chat_session_delete(user=request.user, session_id=session_id)
        return Response(status=status.HTTP_204_NO_CONTENT)
