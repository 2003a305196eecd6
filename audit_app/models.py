"""Audit entries: what happened, to whom, never the raw content."""

from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    class Kind(models.TextChoices):
        MESSAGE = "message"
        REPLY = "reply"
        SECURITY = "security"
        REVIEW = "review"

    class ReviewState(models.TextChoices):
        NONE = "none"
        OPEN = "open"
        CONFIRMED = "confirmed"
        FALSE_POSITIVE = "false_positive"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # A plain id, not a foreign key: the trail outlives the session it speaks of.
    session_id = models.UUIDField(null=True, blank=True, db_index=True)
    role = models.CharField(max_length=10, blank=True, default="")
    content_hash = models.CharField(max_length=64, blank=True, default="")
    token_count = models.PositiveIntegerField(default=0)
    flagged = models.BooleanField(default=False)
    reason = models.TextField(blank=True, default="")
    review_state = models.CharField(
        max_length=16, choices=ReviewState.choices, default=ReviewState.NONE
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.kind} {self.reason[:40]}"
