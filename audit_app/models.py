"""Audit entries: what happened, to whom, never the raw content.

The trail is append-only. The ORM refuses updates and deletes (model and queryset guards)
except for the review decision, sealing into the hash chain and the flood counter of an
unsealed entry; on Postgres, triggers refuse them for every client of the database.
"""

import functools
import operator

import pgtrigger
from django.conf import settings
from django.db import models

# Columns that may change after insert. Review columns are outside the hash (they change
# by design); seal columns are written once by the sealer; ``count`` only while unsealed.
REVIEW_FIELDS = frozenset({"review_state", "reviewed_by", "reviewed_at"})
SEAL_FIELDS = frozenset({"chain_seq", "prev_hash", "entry_hash", "sealed_at"})
UNSEALED_FIELDS = frozenset({"count"})
MUTABLE_FIELDS = REVIEW_FIELDS | SEAL_FIELDS | UNSEALED_FIELDS


class AppendOnlyError(Exception):
    """An attempt to change or delete an audit entry."""


def _names(fields: object) -> set[str]:
    # ``reviewed_by_id`` and ``reviewed_by`` name the same column.
    return {str(name).removesuffix("_id") for name in fields}


class AuditEntryQuerySet(models.QuerySet):
    def update(self, **kwargs: object) -> int:
        changed = _names(kwargs)
        if not changed <= _names(MUTABLE_FIELDS):
            raise AppendOnlyError(f"audit entries are append-only: cannot update {changed}")
        return super().update(**kwargs)

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries are append-only: cannot delete")

    delete.queryset_only = True


def _changed(field: str) -> pgtrigger.Q:
    return pgtrigger.Q(**{f"old__{field}__df": pgtrigger.F(f"new__{field}")})


_SEALED_CHANGE = pgtrigger.Q(old__sealed_at__isnull=False) & functools.reduce(
    operator.or_, [_changed(name) for name in sorted(SEAL_FIELDS | UNSEALED_FIELDS)]
)


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
    # No database constraint and no cascade: deleting a user must not rewrite the trail
    # (an UPDATE the trigger refuses); the entry keeps the id it was written with.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
    )
    # A plain id, not a foreign key: the trail outlives the session it speaks of.
    session_id = models.UUIDField(null=True, blank=True, db_index=True)
    turn_id = models.UUIDField(null=True, blank=True, db_index=True)
    role = models.CharField(max_length=10, blank=True, default="")
    content_hash = models.CharField(max_length=64, blank=True, default="")
    token_count = models.PositiveIntegerField(default=0)
    # How many events this entry stands for: a flood of one user's refused accesses is
    # counted on one entry per window instead of burying everything else.
    count = models.PositiveIntegerField(default=1)
    flagged = models.BooleanField(default=False, db_index=True)
    reason = models.TextField(blank=True, default="")
    # Why a reply was flagged: offsets into the reply and the other users and sessions
    # that introduced each token. Never the text itself.
    evidence = models.JSONField(default=dict, blank=True)
    review_state = models.CharField(
        max_length=16, choices=ReviewState.choices, default=ReviewState.NONE, db_index=True
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    chain_seq = models.BigIntegerField(null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64, blank=True, default="")
    entry_hash = models.CharField(max_length=64, blank=True, default="")
    sealed_at = models.DateTimeField(null=True, blank=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"
        permissions = [("view_withheld_text", "Can read the withheld text of a flagged reply")]
        indexes = [
            # The sealer's scan, and the flood counter's lookup, touch only unsealed rows.
            models.Index(
                fields=["id"], condition=models.Q(chain_seq__isnull=True), name="audit_unsealed"
            ),
            # The leak hold's count, read with every turn's claim (``holds``): a user's
            # flagged entries only, a small index whatever the trail's size.
            models.Index(
                fields=["user", "created_at"],
                condition=models.Q(flagged=True),
                name="audit_flagged_user",
            ),
        ]
        triggers = [
            pgtrigger.ReadOnly(name="audit_content_read_only", exclude=sorted(MUTABLE_FIELDS)),
            pgtrigger.Protect(
                name="audit_sealed_read_only", operation=pgtrigger.Update, condition=_SEALED_CHANGE
            ),
            pgtrigger.Protect(name="audit_no_delete", operation=pgtrigger.Delete),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.kind} {self.reason[:40]}"

    def save(self, *args: object, **kwargs: object) -> None:
        update_fields = kwargs.get("update_fields")
        reviewing = update_fields is not None and _names(update_fields) <= _names(REVIEW_FIELDS)
        if self.pk is not None and not self._state.adding and not reviewing:
            raise AppendOnlyError("audit entries are append-only: save only review fields")
        super().save(*args, **kwargs)

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit entries are append-only: cannot delete")


class AuditChainHead(models.Model):
    """The one row the sealer locks: the last sealed sequence number and hash.

    Also what makes deleting the newest entries visible: the chain must end where the head
    says it does.
    """

    seq = models.BigIntegerField(default=0)
    entry_hash = models.CharField(max_length=64, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"audit chain head at {self.seq}"


class FingerprintPosting(models.Model):
    """The embedded fingerprint index: one keyed token hash introduced by a user's session.

    Used when no Redis is configured; works across processes sharing the database.
    """

    digest = models.BigIntegerField()
    user_id = models.BigIntegerField()
    session_id = models.UUIDField()
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["digest"], name="fingerprint_digest"),
            # A session's erasure finds its rows by session alone.
            models.Index(fields=["session_id"], name="fingerprint_session"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["digest", "user_id", "session_id"], name="fingerprint_posting_unique"
            )
        ]

    def __str__(self) -> str:
        return f"posting of user {self.user_id}"
