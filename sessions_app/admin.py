from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from knox.models import AuthToken

from core.admin import ViewOnlyAdmin

from .models import ChatSession, Message, Turn
from .signin import AdminSignInForm


class MessageInline(ViewOnlyAdmin, admin.TabularInline):
    """Messages come from their owner only."""

    model = Message
    extra = 0
    fields = ["seq", "role", "status", "content", "created_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(ChatSession)
class ChatSessionAdmin(ViewOnlyAdmin, admin.ModelAdmin):
    """Sessions, viewed only. A Save would set the message counter back past an accept
    made meanwhile; a delete would cascade in the database only, leaving the redis store's
    keys and the fingerprint postings: erasure is the owner's DELETE, the expiry or the
    account's deletion."""

    # The title as stored, as message content is: under PII_MODE redacted or with the
    # session's placeholders (and searched so); only its owner's reads restore them.
    list_display = ["id", "owner", "title", "created_at", "expires_at"]
    list_filter = ["created_at"]
    search_fields = ["id", "owner__username", "title"]
    # Retention is the service's policy, not staff's: no extending or reviving a session.
    readonly_fields = [
        "id",
        "owner",
        "title",
        "created_at",
        "last_activity_at",
        "expires_at",
        "next_seq",
    ]
    inlines = [MessageInline]


@admin.register(Turn)
class TurnAdmin(ViewOnlyAdmin, admin.ModelAdmin):
    """Turns, viewed only: a Save would write back a status the worker changed, a delete
    would take the turn's messages from the database only, as for a session. A withheld
    reply is shown as held, not as its ciphertext: its text is read, with the permission
    and audited, from its audit entry's page."""

    list_display = ["id", "session", "status", "attempts", "error_code", "created_at"]
    list_filter = ["status", "error_code"]
    fields = [f.name for f in Turn._meta.fields if f.name != "withheld"] + ["reply_withheld"]
    readonly_fields = fields

    @admin.display(boolean=True, description="reply withheld for review")
    def reply_withheld(self, turn: Turn) -> bool:
        return bool(turn.withheld)


# Past the failed-sign-in limit the admin login shows its form again, saying why (signin.py).
admin.site.login_form = AdminSignInForm

# Knox's own token admin creates tokens and shows each new key once; staff need neither.
admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class AuthTokenAdmin(admin.ModelAdmin):
    """Who holds API tokens and until when; staff may revoke one (delete), not read one.

    Only digests are stored, and no field shows one; knox's primary key is the digest,
    so it is in these pages' addresses and titles, and a digest cannot sign in.
    """

    list_display = ["user", "created", "expiry"]
    fields = ["user", "created", "expiry"]
    readonly_fields = fields
    search_fields = ["user__username"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuthToken | None = None) -> bool:
        return False


# Deleting an account erases its conversations everywhere they are kept (the user model's
# pre_delete receiver, ``account_sessions_erase``), not through these models' own deletes,
# which their view-only admins refuse: the account's delete needs no permission on them.
_ERASED_WITH_THE_ACCOUNT = frozenset(
    str(model._meta.verbose_name) for model in (ChatSession, Turn, Message)
)

User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class AccountAdmin(UserAdmin):
    """Django's user admin; deleting a user erases their conversations with the account."""

    def get_deleted_objects(
        self, objs: list[Model] | QuerySet, request: HttpRequest
    ) -> tuple[list, dict, set, list]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(perms_needed) - _ERASED_WITH_THE_ACCOUNT, protected
