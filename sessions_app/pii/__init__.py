"""Personal data in chat text: detection, redaction and per-session pseudonymization.

Pure Python with no Django import, so it runs the same in web processes, workers and the
``pii_scan`` command. See ``detect``, ``redact``, ``pseudonymize``, ``restore`` and
``scrub_reply``.
"""

from .detectors import DEFAULT_REGIONS, ENTITY_TYPES, Span, detect
from .scrub import (
    MODES,
    PLACEHOLDER,
    holds_placeholder,
    pseudonymize,
    pseudonymize_spans,
    redact,
    redact_spans,
    restore,
    scrub_reply,
    scrub_reply_spans,
    spans_to_scrub,
    unknown_placeholders,
    with_known_values,
)

__all__ = (
    "DEFAULT_REGIONS",
    "ENTITY_TYPES",
    "MODES",
    "PLACEHOLDER",
    "Span",
    "detect",
    "holds_placeholder",
    "pseudonymize",
    "pseudonymize_spans",
    "redact",
    "redact_spans",
    "restore",
    "scrub_reply",
    "scrub_reply_spans",
    "spans_to_scrub",
    "unknown_placeholders",
    "with_known_values",
)
