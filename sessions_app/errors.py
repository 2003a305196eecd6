"""Errors of the chat API: another user's object, a turn already in flight."""

import uuid

from rest_framework import exceptions, status

from audit_app.services import audit_security_event


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
