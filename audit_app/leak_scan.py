"""The leak scan's use of the fingerprint index: which index serves, registering what a
message introduced, scanning a reply, and erasing postings with their session or user.

Apart from the audit trail's writes in ``services`` (which re-exports these for the other
apps): none of this reads or writes audit entries. ``fingerprint`` is the scan's pure half,
``index`` the store of its postings.
"""

import dataclasses
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache

from django.conf import settings

from . import fingerprint
from .fingerprint import ScanResult
from .index import MAX_RECORDS, DbIndex, Layout, RedisIndex

DEFAULT_FINGERPRINT_TTL_SECONDS = 30 * 24 * 3600
# 4,096 hashes per generation: listpacks (<= 128 fields) up to ~400,000 features each.
DEFAULT_BUCKET_BITS = 12


def _fingerprint_ttl() -> int:
    return getattr(settings, "FINGERPRINT_TTL_SECONDS", DEFAULT_FINGERPRINT_TTL_SECONDS)


@lru_cache(maxsize=8)
def _redis_index(url: str, ttl: int, bits: int) -> RedisIndex:
    return RedisIndex(url=url, layout=Layout(ttl_seconds=ttl, bucket_bits=bits))


def fingerprint_index() -> RedisIndex | DbIndex:
    """Return the configured index: Redis when a URL is set, else the database table."""
    url = getattr(settings, "FINGERPRINT_REDIS_URL", "") or settings.REDIS_URL
    if not url:
        return DbIndex(ttl_seconds=_fingerprint_ttl())
    bits = getattr(settings, "FINGERPRINT_BUCKET_BITS", DEFAULT_BUCKET_BITS)
    return _redis_index(url, _fingerprint_ttl(), bits)


def _digests(text: str) -> tuple[list[fingerprint.Feature], dict[str, bytes]]:
    found = fingerprint.features(text, fingerprint.vocabulary(tuple(settings.LEAK_SCAN_LANGUAGES)))
    key = fingerprint.derive_key(settings.SECRET_KEY, "fingerprint")
    return found, {f.text: fingerprint.keyed_digest(key, f.text) for f in found}


def fingerprints_register(
    *,
    user_id: int,
    session_id: uuid.UUID,
    text: str,
    scan: ScanResult | None = None,
    erasable: bool = True,
) -> None:
    """Register the distinctive tokens of ``text`` as introduced by this user's session.

    A ``scan`` of this same text (``reply_scan``'s) lends its digests instead of computing
    them again. Not ``erasable``: nothing will ever erase the session (a stateless
    conversation), so the index keeps the postings for the scan but not the session's
    list of them, which only an erasure reads. Raise ``IndexUnavailable`` if the index
    cannot be reached.
    """
    if scan is not None and scan.text == text:
        keys = scan.digests
    else:
        keys = tuple(sorted(set(_digests(text)[1].values())))
    fingerprint_index().add(keys, user_id=user_id, session_id=session_id, erasable=erasable)


def reply_scan(*, user_id: int, session_id: uuid.UUID, text: str) -> ScanResult:
    """Judge whether ``text`` carries tokens only other users introduced; one index read.

    Raise ``IndexUnavailable`` if the index cannot be reached.
    """
    found, digests = _digests(text)
    keys = tuple(sorted(set(digests.values())))
    postings = fingerprint_index().lookup(keys)
    by_text = {feature: postings.get(digest, []) for feature, digest in digests.items()}
    result = fingerprint.score(
        found, by_text, user_id=user_id, session_id=str(session_id), max_users=MAX_RECORDS
    )
    return dataclasses.replace(result, text=text, digests=keys)


def fingerprints_purge_expired() -> int:
    """Delete the postings past ``FINGERPRINT_TTL_SECONDS`` that the index does not expire
    by itself (the database table's); return how many. Raise ``IndexUnavailable`` if the
    index cannot be reached."""
    return fingerprint_index().purge_expired()


def fingerprints_erase_session(
    *, session_id: uuid.UUID, texts: Callable[[], Iterable[str]] = tuple
) -> None:
    """Remove every posting that names the session, whatever texts it still holds.

    The index finds them by the session (its column, or its lists in Redis). ``texts``
    is called only while Redis may hold postings from before those lists, which only the
    digests of the texts they came from name. Raise ``IndexUnavailable`` if the index
    cannot be reached.
    """
    index = fingerprint_index()
    if index.erase_session(session_id=session_id):
        digests = {d for text in texts() for d in _digests(text)[1].values()}
        index.erase_session(sorted(digests), session_id=session_id)


def fingerprints_erase_user(*, user_id: int) -> None:
    """Remove the user's postings that stand for several of its sessions, which no
    session's erasure takes: run as the account is deleted, once its sessions are erased.

    Its other postings stay: those of its stateless conversations, which name no session
    of it, and, in Redis, those folded before the index listed them per user (both age
    out). Raise ``IndexUnavailable`` if the index cannot be reached.
    """
    fingerprint_index().erase_user(user_id=user_id)
