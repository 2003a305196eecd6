"""Serializers: the JSON shapes of API.md, and strict input validation."""

from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from . import privacy
from .models import ChatSession, Message, Turn


class SessionSerializer(serializers.ModelSerializer):
    """A session as its owner reads it: the title with its placeholders restored.

    Only the owner's own reads use it; the admin shows the title as stored.
    """

    message_count = serializers.SerializerMethodField()

    class Meta:
        model = ChatSession
        fields = ["id", "title", "created_at", "expires_at", "message_count"]
        read_only_fields = ["id", "created_at", "expires_at", "message_count"]
        extra_kwargs = {"title": {"required": False, "max_length": 200}}

    def get_message_count(self, session: ChatSession) -> int:
        # seq is contiguous per session, so the count needs no query.
        return session.next_seq - 1

    def to_representation(self, session: ChatSession) -> dict[str, Any]:
        data = super().to_representation(session)
        data["title"] = privacy.title_restore(session=session)
        return data


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "seq", "role", "content", "created_at", "status"]
        read_only_fields = fields


# One instance serializes every turn's messages: a ModelSerializer builds its fields from
# the model on each instance, several times the cost of the representation itself, and
# ``to_representation`` keeps no state (see ``turn_data``).
_MESSAGE = MessageSerializer()


class StrictTextField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into text."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


# NUL is refused (DRF's CharField does); a message must hold something besides whitespace.
# (drf-spectacular adds the empty string beside the pattern of a field that may be blank.)
NO_NUL = r"^[^\x00]+$"
NOT_BLANK_NO_NUL = r"^[^\x00]*[^\s\x00][^\x00]*$"


@extend_schema_field(
    {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.MAX_MESSAGE_CHARS,
        "pattern": NOT_BLANK_NO_NUL,
        "description": "Not only whitespace, no NUL characters, "
        f"at most {settings.MAX_MESSAGE_CHARS} characters.",
    }
)
class MessageContentField(StrictTextField):
    """A message's text; ``MessageCreateSerializer`` checks it against the current limits."""


# No schema default: "" would break the pattern (drf-spectacular puts it beside it); a title
# left out is the service's "" all the same.
@extend_schema_field(
    {
        "type": "string",
        "maxLength": 200,
        "pattern": NO_NUL,
        "description": "At most 200 characters, no NUL characters; empty when left out. "
        "Personal data in it is protected as in messages (`PII_MODE`).",
    }
)
class TitleField(StrictTextField):
    """A session's title: optional, at most 200 characters as sent, no NUL characters."""


class MessageCreateSerializer(serializers.Serializer):
    content = MessageContentField(trim_whitespace=False)

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The message is empty.", code="blank")
        limit = settings.MAX_MESSAGE_CHARS
        if len(value) > limit:
            raise serializers.ValidationError(
                f"The message is longer than {limit} characters.", code="max_length"
            )
        return value


class TurnErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    detail = serializers.CharField()


class TurnSerializer(serializers.ModelSerializer):
    user_message = serializers.SerializerMethodField()
    reply = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    class Meta:
        model = Turn
        fields = [
            "id",
            "session",
            "status",
            "user_message",
            "reply",
            "error",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def _message(self, turn: Turn, role: str) -> dict[str, Any] | None:
        # The turn's messages come from the history store with the turn (``exchange``).
        message = next((m for m in turn.exchange if m.role == role), None)
        return _MESSAGE.to_representation(message) if message else None

    @extend_schema_field(MessageSerializer)
    def get_user_message(self, turn: Turn) -> dict[str, Any] | None:
        return self._message(turn, Message.Role.USER)

    @extend_schema_field(MessageSerializer(allow_null=True))
    def get_reply(self, turn: Turn) -> dict[str, Any] | None:
        return self._message(turn, Message.Role.ASSISTANT)

    @extend_schema_field(TurnErrorSerializer(allow_null=True))
    def get_error(self, turn: Turn) -> dict[str, str] | None:
        if not turn.error_code:
            return None
        return {"code": turn.error_code, "detail": turn.error_detail}


_TURN = TurnSerializer()


def turn_data(turn: Turn) -> dict[str, Any]:
    """Return ``turn`` as API.md shows it (``TurnSerializer(turn).data``), by one shared
    instance, as ``_MESSAGE`` serializes messages: every answer of the chat carries a turn."""
    return _TURN.to_representation(turn)


class SessionCreateSerializer(serializers.Serializer):
    title = TitleField(required=False, allow_blank=True, max_length=200)


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"}, trim_whitespace=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The request goes along: the failed-sign-in limit counts per client address too.
        user = authenticate(
            request=self.context["request"],
            username=attrs["username"],
            password=attrs["password"],
        )
        if user is None:
            raise serializers.ValidationError(
                "Unable to sign in with these credentials.", code="authorization"
            )
        return {"user": user}


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send it as `Authorization: Bearer <token>`.")
    expires_at = serializers.DateTimeField()


@extend_schema_field(
    {
        "type": "string",
        "nullable": True,
        "minLength": 1,
        "pattern": r"^[A-Za-z0-9_-]+={0,2}$",
        # No maxLength: a token of ours past the limit (issued before it was lowered) is
        # refused with 413, not 400; one altered or forged with 400 (``token_invalid``).
        "description": "The token of the last reply, unchanged; null to start a conversation. "
        f"A turn that would make it longer than {settings.STATELESS_TOKEN_MAX_BYTES} "
        "characters is refused (413).",
    }
)
class StatelessTokenField(StrictTextField):
    """A stateless token as sent: its form and authenticity are ``stateless.token_open``'s."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # A NUL in a token is a malformed token, answered as every other one is
        # (``token_malformed``), not with CharField's own ``null_characters_not_allowed``.
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)
        ]


class StatelessChatRequestSerializer(MessageCreateSerializer):
    """A stateless turn: the message (checked as any message is) and the last token."""

    token = StatelessTokenField(allow_null=True, allow_blank=True, trim_whitespace=False)


class StatelessChatSerializer(serializers.Serializer):
    reply = serializers.CharField(help_text="Claude's reply, as its owner reads it.")
    token = serializers.CharField(help_text="The token to send with the next message.")
