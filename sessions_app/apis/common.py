"""What the views share: path parameters, limits, the chat throttle."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.throttling import UserRateThrottle

from core.api import (
    ErrorSerializer,
)

MAX_WAIT_SECONDS = 60
STREAM_MAX_SECONDS = 600
KEEPALIVE_SECONDS = 15

# Ids are UUIDs; anything else is simply an id that does not exist (404).
SESSION_ID = OpenApiParameter("session_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
TURN_ID = OpenApiParameter("turn_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
# A page number past the last page (or not a number) is 404, as DRF's paginator answers.
PAGE_NOT_FOUND = OpenApiResponse(ErrorSerializer, description="No such object, or no such page.")


class ChatRateThrottle(UserRateThrottle):
    """Messages a user may post, over all sessions and the stateless endpoint."""

    scope = "chat"

    def get_rate(self) -> str:
        # Read at request time so the setting can change without re-importing DRF.
        return settings.CHAT_THROTTLE_RATE


def nothing() -> None:
    return None
