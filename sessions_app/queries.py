"""Reads for workers and the sweep, by turn id: not scoped to a requesting user.

The web never calls these (it reads through ``selectors``, the ownership gate). A worker
works for the owner the task names; the history it loads here carries the owner and
session of what was really stored, and the send guard compares them with the task's.
"""

from datetime import timedelta

from django.db.models import QuerySet
from django.utils import timezone

from core.ids import as_uuid

from . import crypto
from .models import Turn
from .stores import StoredMessage, history_store


def turn_get(*, turn_id: object) -> Turn | None:
    """Return a turn with its session, or None if it is gone."""
    tid = as_uuid(turn_id)
    return Turn.objects.select_related("session").filter(pk=tid).first() if tid else None


def turn_in_flight(*, turn_id: object) -> bool:
    """Tell whether the turn still exists and still waits for its reply.

    Checked before every call to Claude: a deleted session's turn must not send its
    history again, on a retry or from a redelivered task.
    """
    return Turn.objects.filter(pk=turn_id, status__in=Turn.IN_FLIGHT).exists()


def turn_history(*, turn: Turn) -> list[StoredMessage]:
    """Return the conversation up to ``turn``, as the store holds it for the turn's owner."""
    return history_store().history(session=turn.session, turn_id=turn.pk)


def turn_list_stale(*, older_than_seconds: int) -> QuerySet[Turn]:
    """Return turns left pending or running for longer than the given age."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return Turn.objects.filter(status__in=Turn.IN_FLIGHT, updated_at__lt=cutoff)


def turn_withheld_text(*, turn_id: object) -> str | None:
    """Return the text withheld from a suppressed turn, for staff review; None if none.

    The review console checks the reader's permission and audits the read.
    """
    sealed = Turn.objects.filter(pk=turn_id).values_list("withheld", flat=True).first()
    return crypto.unseal(bytes(sealed)).decode() if sealed else None
