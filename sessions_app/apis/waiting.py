"""How a view waits for a turn: the slots it holds, the hang-up test, the re-reads."""

import functools
import select
import socket
import ssl
from collections.abc import Callable, Iterator

from celery import current_app
from rest_framework.request import Request

from .. import events, selectors
from ..models import Turn
from .common import nothing


def client_gone(request: Request) -> Callable[[], bool]:
    """Under gunicorn, tell whether the client hung up: its socket reads as closed.

    A wait or a stream the client left then gives its thread back at once, instead of at
    the turn's end (the turn itself goes on). Elsewhere (TLS sockets, other servers) never.
    """
    sock = request.META.get("gunicorn.socket")
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return events.never
    # poll, not select: select refuses a descriptor past 1023, which a worker holding many
    # kept-alive connections hands out, and every wait there read as hung up at once.
    readable = select.poll()
    try:
        readable.register(sock, select.POLLIN)
    except (OSError, ValueError):  # closed already
        return lambda: True

    def gone() -> bool:
        try:
            return bool(readable.poll(0)) and not sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


def wait_subscribe(
    *, turn_id: object, timeout: float, gone: Callable[[], bool] | None = None
) -> Iterator[str | None]:
    """Subscribe to a turn's changes for a wait of ``timeout`` seconds; see ``turn_wait``.

    Called before the turn is queued: every change then comes as a notification, so the
    wait needs no first read. With Redis down the wait polls instead.
    """
    changes = events.turn_changes(
        turn_id=turn_id, timeout=timeout, poll_if_down=True, gone=gone, unread=Turn.IN_FLIGHT
    )
    next(changes)
    # A task run eagerly has run by the time the wait begins, its notifications published
    # only when the request's transaction commits (or, inside a test's, never): look first.
    return _first_look(changes) if current_app.conf.task_always_eager else changes


def _first_look(changes: Iterator[str | None]) -> Iterator[str | None]:
    try:
        yield events.UNKNOWN
        yield from changes
    finally:
        changes.close()


def turn_wait(*, user, turn: Turn, changes: Iterator[str | None] | None) -> Turn:
    """Return the just-accepted turn once it has ended, or as it is when ``changes`` stop.

    ``changes`` comes from ``wait_subscribe``, taken before the turn was queued; without
    it (no wait) the turn is answered as accepted, ``pending`` (API.md), as under ASGI: not
    read again, though a worker, or eager tasks, may have moved it on. A notification that
    the turn is pending or running does not even wake the wait, one that it ended costs a
    read of the whole turn, and an idle tick or a poll one small query first. Every read
    goes through ``turn_refresh_for_owner``: the message is stored, so a connection lost
    now must not turn into an error that makes the client send it again.
    """
    if changes is None:
        return turn
    try:
        for status in changes:
            if status in Turn.IN_FLIGHT:
                continue
            turn = turn_reread(user, turn) if status else _refresh_when_ended(user, turn)
            if turn.is_finished:
                return turn
    finally:
        changes.close()
    return turn_reread(user, turn)


async def wait_subscribe_async(*, user, turn: Turn, timeout: float) -> events.AsyncTurnWatch:
    """``wait_subscribe`` on the event loop: return the watch of a wait of ``timeout`` s.

    Subscribed through the process's listener before the turn is queued: every change then
    comes as a notification, so the wait needs no first read. With Redis down it polls.
    """
    watch = events.AsyncTurnWatch(
        turn=turn,
        refresh=functools.partial(_refresh_when_ended, user),
        refresh_told=functools.partial(turn_reread, user),
        timeout=timeout,
        poll_if_down=True,
        unread=Turn.IN_FLIGHT,
    )
    await watch.subscribe()
    return watch


async def turn_wait_async(*, user, watch: events.AsyncTurnWatch) -> Turn:
    """``turn_wait`` on the event loop, on a watch from ``wait_subscribe_async``.

    No thread is held between the re-reads; the watch is closed on the way out.
    """
    try:
        if current_app.conf.task_always_eager:
            # As in ``wait_subscribe``: a task run eagerly has run by now, its notifications
            # published at commit (or, inside a test's transaction, never): look first.
            await watch.read()
        async for _ in watch:
            pass
    finally:
        watch.close()
    turn = watch.turn
    return turn if turn.is_finished else await events.in_thread(turn_reread, user, turn)


def turn_reread(user, turn: Turn) -> Turn:
    return selectors.turn_refresh_for_owner(user=user, turn=turn)


def _refresh_when_ended(user, turn: Turn) -> Turn:
    # A wait answers nothing before its turn ends: until then a notification ("running")
    # costs one small query, not the turn, its messages and the vault.
    return turn_reread(user, turn) if selectors.turn_ended_for_owner(user=user, turn=turn) else turn


def wait_slots_take(*, user_id: int, wait: int | None) -> tuple[int, Callable[[], None]]:
    """Take the slots a ``?wait`` holds; return how long it may wait and their release.

    The caller's own slot first: past ``MAX_WAITS_PER_USER`` that is 429, and nothing is
    stored. Then one of the process's: if none is free the message is still accepted and
    answered at once (202; the client polls), rather than queued behind other waits.
    """
    if not wait:
        return 0, nothing
    release_user = events.wait_slot_acquire(user_id=user_id)
    release_budget = events.wait_budget_take()
    if release_budget is None:
        release_user()
        return 0, nothing
    return wait, both_released(release_budget, release_user)


def stream_slots_take(*, user_id: int) -> Callable[[], None]:
    """Take the slots a stream holds (429 past the caller's own, 503 past the process's)."""
    release_user = events.wait_slot_acquire(user_id=user_id)
    release_budget = events.wait_budget_take()
    if release_budget is None:
        release_user()
        raise events.WaitBudgetSpent()
    return both_released(release_budget, release_user)


def both_released(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def release() -> None:
        try:
            first()
        finally:
            second()

    return release
