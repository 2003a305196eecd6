"""What both backends share: ``MAX_RECORDS``, the mark of several sessions, the error."""

import uuid

from core.errors import BackendUnavailable

# Three records of 20 bytes stay under Redis's 64-byte listpack value limit.
MAX_RECORDS = 3
# The session of a record that stands for several sessions of its user (no UUID is this).
SEVERAL = b"\xff" * 16
SEVERAL_SESSION = uuid.UUID(bytes=SEVERAL)


class IndexUnavailable(BackendUnavailable):
    """The fingerprint index cannot be reached: the scan cannot judge this reply."""
