"""Ids from URLs and task arguments."""

import uuid


def as_uuid(value: object) -> uuid.UUID | None:
    """Return ``value`` as a UUID, or None if it is not one (an id that cannot exist)."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None
