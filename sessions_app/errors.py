"""Errors of the chat API: another user's object, a turn already in flight, an accept whose
COMMIT nothing could confirm."""

import uuid

from rest_framework import exceptions, status

from audit_app.services import audit_security_event
from core.errors import BackendUnavailable


class ForeignAccess(exceptions.NotFound):
    """Another user's object: answered exactly like a missing one, but audited.

    ``core.errors.exception_handler`` calls ``audit`` after the request's transaction has
    rolled back, so the trail keeps the entry.
    """

    def __init__(
        self,
        detail: str,
        *,
        user_id: int,
        session_id: uuid.UUID,
        what: str,
        turn_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(detail)
        self.user_id = user_id
        self.session_id = session_id
        self.turn_id = turn_id
        self.what = what

    def audit(self) -> None:
        audit_security_event(
            user_id=self.user_id,
            session_id=self.session_id,
            turn_id=self.turn_id,
            reason=f"access to {self.what}",
        )


class TurnInFlight(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = (
        "A reply to this session's previous message is still being written; "
        "wait for it to finish, then send again."
    )
    default_code = "turn_in_flight"


class CommitUnconfirmed(BackendUnavailable):
    """An accept's COMMIT lost its answer and nothing could tell whether it took.

    Answered 503, as any outage, which tells the client that nothing was kept: whoever
    answers it has the turn settled once the database answers again
    (``tasks.turn_settle_later``), removed with its message if the COMMIT took after all.
    """

    def __init__(self, *, turn_id: uuid.UUID, session_id: uuid.UUID) -> None:
        super().__init__(f"whether turn {turn_id} was committed is unknown")
        self.turn_id = turn_id
        self.session_id = session_id
