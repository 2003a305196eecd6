from django.contrib import admin

from .models import ChatSession, Message, Turn


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["seq", "role", "status", "content", "created_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "title", "created_at", "expires_at"]
    list_filter = ["created_at"]
    search_fields = ["id", "owner__username", "title"]
    readonly_fields = ["id", "owner", "created_at", "last_activity_at", "next_seq"]
    inlines = [MessageInline]


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ["id", "session", "status", "attempts", "error_code", "created_at"]
    list_filter = ["status", "error_code"]
    readonly_fields = [f.name for f in Turn._meta.fields]
