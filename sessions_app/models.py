"""Chat sessions, their messages and turns: fields and database constraints only."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

# The constraints whose violation means something to the caller (a turn already in flight,
# a turn's reply already stored, a seq already taken), by the name
# ``core.sql.violated_constraint`` gives.
TURN_ONE_IN_FLIGHT = "turn_one_in_flight_per_session"
MESSAGE_ONE_PER_TURN_ROLE = "message_one_per_turn_role"
MESSAGE_SEQ_UNIQUE = "message_seq_unique"
# The Postgres sequence of the history store's fences (migration 0005,
# ``services.common.fence_next``).
FENCE_SEQUENCE = "sessions_app_reply_fence"


class ChatSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    title = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_activity_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    # Next per-session message number; bumped under a row lock so seq never collides.
    next_seq = models.PositiveIntegerField(default=1)

    # Not a column: set by the accept's locking statement (``selectors``), the fence of the
    # message it writes to a history store outside the database (0: none, off Postgres).
    accept_fence = 0

    class Meta:
        indexes = [models.Index(fields=["owner", "-created_at"], name="session_owner_created")]

    def __str__(self) -> str:
        return f"{self.id} ({self.owner_id})"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        OK = "ok"
        SUPPRESSED = "suppressed"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    turn = models.ForeignKey("Turn", on_delete=models.CASCADE, related_name="messages")
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OK)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "seq"], name=MESSAGE_SEQ_UNIQUE),
            # One user message and at most one reply per turn, even if two workers race.
            models.UniqueConstraint(fields=["turn", "role"], name=MESSAGE_ONE_PER_TURN_ROLE),
        ]
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq} {self.role}"


class Turn(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        SUPPRESSED = "suppressed"
        FAILED = "failed"

    IN_FLIGHT = (Status.PENDING, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="turns")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    error_code = models.CharField(max_length=40, blank=True, default="")
    error_detail = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Past it no attempt starts: set on acceptance, renewed when the sweep re-queues a lost
    # turn (a lost turn would otherwise be re-run only to fail at once).
    deadline_at = models.DateTimeField(null=True, blank=True)
    # A suppressed reply's text, sealed with ENCRYPTION_KEYS, for staff review only; the
    # user's reply message holds the neutral notice instead.
    withheld = models.BinaryField(null=True, blank=True, editable=False)

    # Not a column: set by the claim (``turn_claim``), whether its owner's replies are held
    # (``audit_app.holds``), so the turn's end withholds its reply whatever the scan finds.
    leak_hold = False
    # Not a column: set as a run locks the turn to end it (``services.reply``), the value
    # that fences its writes to a history store outside the database.
    reply_fence = 0

    class Meta:
        constraints = [
            # Two web processes racing cannot both start a turn in one session.
            models.UniqueConstraint(
                fields=["session"],
                condition=Q(status__in=["pending", "running"]),
                name=TURN_ONE_IN_FLIGHT,
            ),
        ]
        indexes = [
            models.Index(
                fields=["updated_at"],
                condition=Q(status__in=["pending", "running"]),
                name="turn_in_flight_updated",
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"

    @property
    def is_finished(self) -> bool:
        return self.status not in self.IN_FLIGHT


class SessionVault(models.Model):
    """The originals behind one session's PII placeholders, encrypted with its own data key.

    ``wrapped_key`` is the session's data key encrypted under ``ENCRYPTION_KEYS``;
    ``entries`` is ``{placeholder: original}`` as JSON encrypted with the data key. The row
    goes with its session, and with it the only copy of the key.
    """

    session = models.OneToOneField(
        ChatSession, on_delete=models.CASCADE, primary_key=True, related_name="vault"
    )
    wrapped_key = models.BinaryField()
    entries = models.BinaryField()

    def __str__(self) -> str:
        return f"vault of {self.session_id}"
