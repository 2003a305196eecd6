"""Posting a message and waiting for its turn; reading the history."""

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator

from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest, HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from core.api import (
    RETRY_AFTER,
    ErrorSerializer,
    LoggedUserMixin,
    PagePagination,
    errors,
)
from core.errors import once_more_on_fresh_connection

from .. import events, selectors, services, tasks
from ..errors import CommitUnconfirmed
from ..models import Turn
from ..serializers import (
    MessageCreateSerializer,
    MessageSerializer,
    TurnSerializer,
    turn_data,
)
from .common import (
    MAX_WAIT_SECONDS,
    PAGE_NOT_FOUND,
    SESSION_ID,
    ChatRateThrottle,
)
from .serving import AsyncDispatch, ServerModeView, request_thread_release, to_its_end
from .waiting import (
    client_gone,
    turn_wait,
    turn_wait_async,
    wait_slots_take,
    wait_subscribe,
    wait_subscribe_async,
)

logger = logging.getLogger(__name__)


def _wait_seconds(request: Request) -> int | None:
    raw = request.query_params.get("wait")
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,2}", raw) or int(raw) > MAX_WAIT_SECONDS:
        raise ValidationError(
            {"wait": [f"wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}."]}
        )
    return int(raw)


class MessageListCreateApi(AsyncDispatch, LoggedUserMixin, GenericAPIView):
    serializer_class = MessageSerializer
    pagination_class = PagePagination

    @classmethod
    def as_view(cls, **initkwargs):
        """Under ASGI a POST runs ``apost`` on the event loop; see ``ServerModeView``."""
        return ServerModeView(cls, initkwargs, super().as_view(**initkwargs), {"POST": "apost"})

    def get_queryset(self):
        return selectors.message_list_for_owner(
            user=self.request.user, session_id=self.kwargs["session_id"]
        )

    def get_throttles(self):
        # Only posting is throttled; reading history is not a message.
        return [ChatRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        parameters=[SESSION_ID],
        responses={
            200: MessageSerializer(many=True),
            **errors(400, 401, 503),
            404: PAGE_NOT_FOUND,
        },
    )
    def get(self, request: Request, session_id: str) -> Response:
        """List the session's messages in `seq` order, 100 a page (`?page=N`)."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(MessageSerializer(page, many=True).data)

    @extend_schema(
        request=MessageCreateSerializer,
        parameters=[
            SESSION_ID,
            OpenApiParameter(
                "wait",
                {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                description=f"Seconds (0-{MAX_WAIT_SECONDS}) to wait for the reply; "
                "anything else is 400.",
            ),
            RETRY_AFTER,
        ],
        responses={
            200: OpenApiResponse(TurnSerializer, description="The turn ended within ?wait."),
            202: OpenApiResponse(TurnSerializer, description="The turn is accepted."),
            **errors(400, 401, 404, 409, 413, 503),
            429: OpenApiResponse(
                ErrorSerializer,
                description="Too many messages, or too many waits and streams of the caller's "
                "open at once (the message is not stored); see Retry-After.",
            ),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        """Post a message: 202 with the new turn (`pending`), Claude answers in the background.

        With `?wait=N` (0-60), wait up to N seconds for the turn to end: 200 with the ended
        turn, or 202 if it has not ended by then. A second message while a turn of the session
        is in flight is 409; too many waits of the caller's open at once, 429.
        """
        accepted = self._accept(request, session_id, gone=client_gone(request))
        try:  # every way out gives the slots back, an error answer's too
            turn = turn_wait(user=request.user, turn=accepted.turn, changes=accepted.changes)
        finally:
            accepted.release()
        ended = accepted.wait is not None and turn.is_finished
        return self._answer(turn_data(turn), ended=ended)

    async def apost(self, request: HttpRequest, session_id: str) -> HttpResponseBase:
        """POST on the event loop: the accept, the queueing and each re-read in a thread, a
        ``?wait`` subscribed on the loop in between (so it needs no first read) and awaited."""

        async def serve(drf_request: Request) -> Response:
            # A message stored by then must still have its turn queued, as when the accept
            # and the queueing ran in one thread; its wait and slots are let go of.
            accepted = await to_its_end(
                self._accept_async(drf_request, session_id), undo=_Accepted.aclose
            )
            turn = accepted.turn
            try:
                if accepted.watch is not None:
                    request_thread_release()
                    turn = await turn_wait_async(user=drf_request.user, watch=accepted.watch)
                data = await events.in_thread(turn_data, turn)
            finally:
                await accepted.aclose()
            return self._answer(data, ended=accepted.wait is not None and turn.is_finished)

        return await self.dispatch_async(request, serve, session_id=session_id)

    async def _accept_async(self, request: Request, session_id: str) -> "_Accepted":
        """``_accept`` on the event loop: a ``?wait`` subscribes here, after the accept and
        before the queueing (each in a thread of the database pool)."""
        accepted = await events.in_thread(self._accept_checked, request, session_id)
        if not accepted.timeout:
            return accepted  # queued in the accept's thread: nothing waits for it
        try:
            watch = await wait_subscribe_async(
                user=request.user, turn=accepted.turn, timeout=accepted.timeout
            )
            accepted = dataclasses.replace(accepted, watch=watch)
            await events.in_thread(tasks.turn_enqueue, turn=accepted.turn)
        except BaseException as exc:
            await accepted.aclose()
            taken = await events.in_thread(_unqueued_discard, accepted.turn, request.user)
            if taken and isinstance(exc, Exception):
                # Queued after all: answered as accepted, unwaited (its slots are let go).
                return dataclasses.replace(accepted, wait=None, release=_nothing, watch=None)
            raise
        return accepted

    def _accept_checked(self, request: Request, session_id: str) -> "_Accepted":
        """DRF's own checks (authentication, the throttle), then ``_accept``."""
        self.initial(request, session_id=session_id)
        return self._accept(request, session_id, subscribe_on_loop=True)

    def _accept(
        self,
        request: Request,
        session_id: str,
        *,
        subscribe_on_loop: bool = False,
        gone: Callable[[], bool] | None = None,
    ) -> "_Accepted":
        """Validate, take the wait's slots, store the message and queue its turn.

        A wait subscribes to the turn's changes before the turn is queued, so that it needs
        no first read of the turn: here for a synchronous wait, told by ``gone`` that its
        client hung up; with ``subscribe_on_loop`` a waited turn is left unqueued instead,
        for ``_accept_async`` to subscribe on the event loop and then queue.
        """
        wait = _wait_seconds(request)
        data = MessageCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        # Taken before anything is stored: a 429 for too many waits leaves no message.
        timeout, release = wait_slots_take(user_id=request.user.pk, wait=wait)
        changes, turn = None, None
        try:
            tasks.beat_jobs_if_due()  # before anything is stored: an error here leaves nothing
            turn = services.message_accept(
                user=request.user, session_id=session_id, content=data.validated_data["content"]
            )
            if timeout and subscribe_on_loop:  # the event loop subscribes, then queues
                return _Accepted(turn, wait, timeout, release)
            if timeout:
                changes = wait_subscribe(turn_id=turn.pk, timeout=timeout, gone=gone)
            tasks.turn_enqueue(turn=turn)
        except BaseException as exc:
            if changes is not None:
                changes.close()
            release()
            if turn is not None:
                if _unqueued_discard(turn, request.user) and isinstance(exc, Exception):
                    return _Accepted(turn, None, 0, _nothing)  # queued after all: see there
            elif isinstance(exc, CommitUnconfirmed):
                tasks.turn_settle_later(turn_id=exc.turn_id, session_id=exc.session_id)
            raise
        return _Accepted(turn, wait, timeout, release, changes)

    @staticmethod
    def _answer(data: dict, *, ended: bool) -> Response:
        return Response(data, status=status.HTTP_200_OK if ended else status.HTTP_202_ACCEPTED)


def _unqueued_discard(turn: Turn, user: AbstractBaseUser) -> bool:
    """Remove a turn accepted but not queued, with its message: an error came between (the
    broker down, or the wait's subscription failing), and an error answer leaves nothing
    behind, nor a turn that only the stale-turn sweep would end.

    A turn that a worker already took is left alone (only a pending turn is discarded), and
    True returned: its queueing went through after all (the broker took the task, and its
    answer was lost), so it will be answered, and the request must not say that nothing was
    kept.
    """
    try:
        # Once more after a lost connection: left, the turn would be answered by the sweep
        # after a 503 that said nothing was kept, and the resend refused meanwhile (409).
        if once_more_on_fresh_connection(services.turn_discard, turn_id=turn.pk):
            return False
        taken = selectors.turn_get_for_owner(user=user, turn_id=turn.pk)
        return taken.status != Turn.Status.PENDING
    except Exception:  # noqa: BLE001 - the error being answered matters more
        # Marked, the session's next message and the sweep remove it (if no worker took
        # it) instead of answering it: the answer says nothing was kept.
        logger.warning("could not discard unqueued turn %s; marking it", turn.pk)
        with contextlib.suppress(Exception):
            services.turn_mark_unconfirmed(turn_id=turn.pk)
        return False


def _nothing() -> None:
    """The release of slots already given back."""


@dataclasses.dataclass(frozen=True)
class _Accepted:
    """A message accepted: its turn, the ``?wait`` asked, the time the slots allow, the
    slots' release and the turn's changes subscribed to, for a synchronous wait
    (``changes``) or on the event loop (``watch``)."""

    turn: Turn
    wait: int | None
    timeout: int
    release: Callable[[], None]
    changes: Iterator[str | None] | None = None
    watch: events.AsyncTurnWatch | None = None

    async def aclose(self) -> None:
        """On the event loop: end the wait's subscription, then give the slots back."""
        if self.watch is not None:
            self.watch.close()
        await events.in_thread(self.release)
