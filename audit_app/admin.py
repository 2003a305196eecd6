from django.contrib import admin

from .models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "kind", "user", "session_id", "role", "flagged", "review_state"]
    list_filter = ["kind", "flagged", "review_state"]
    search_fields = ["session_id", "user__username", "reason"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields if f.name != "review_state"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the trail is append-only
