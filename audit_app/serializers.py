"""The JSON shapes of audit entries (API.md's audit entry object) and the list's filters."""

from django.core.exceptions import ObjectDoesNotExist
from rest_framework import serializers

from .models import AuditEntry


class AuditEntrySerializer(serializers.ModelSerializer):
    user = serializers.SerializerMethodField()
    session = serializers.UUIDField(source="session_id", allow_null=True, read_only=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "created_at",
            "kind",
            "user",
            "session",
            "role",
            "content_hash",
            "token_count",
            "flagged",
            "reason",
            "review_state",
        ]
        read_only_fields = fields

    def get_user(self, entry: AuditEntry) -> str | None:
        # The trail outlives accounts: a deleted user's entries keep no username.
        try:
            user = entry.user
        except ObjectDoesNotExist:
            return None
        return user.get_username() if user is not None else None


class AuditEntryFilterSerializer(serializers.Serializer):
    flagged = serializers.BooleanField(required=False, allow_null=True, default=None)
    kind = serializers.ChoiceField(choices=AuditEntry.Kind.choices, required=False)
    user = serializers.CharField(required=False, max_length=150)
    session = serializers.UUIDField(required=False)
