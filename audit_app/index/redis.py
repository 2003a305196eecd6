"""``RedisIndex``: the fingerprint index in Redis; with its Lua scripts (``scripts.py``),
the app's only Redis code.

Redis layout, chosen for memory (a posting costs about 35 bytes, measured by the bench):
keys ``fp:{generation}:{bucket}`` are small hashes that Redis keeps as listpacks; the
field is the rest of the feature's 8-byte keyed hash (6 bytes), the value up to
``MAX_RECORDS`` records of 20 bytes (user id u32, session UUID) or ``*`` once more users
than that introduced the feature. A record per session, not per user: erasing one session
must not forget the same user's others. When a user's sessions would overflow the value,
they become one record of that user with ``SEVERAL`` for a session, which no one session's
erasure removes: it goes when the user's account is erased (``erase_user``), or ages out
with its generation. Retention: a generation key expires ``ttl`` after the generation
ends, so a posting lives between ``ttl`` and ``ttl * (1 + 1/GENERATIONS)``.

Each session also keeps, per generation, the list of the postings it added there: the key
``fp:{generation}:s:{session hex}``, a string of 8-byte digests with the generation's
expiry, appended to in the registering script (8 bytes a posting; a posting already
there, folded or shared adds nothing). Erasing a session reads its lists, so it needs
no text of the session: a message whose accept was undone, or whose history expired
first, is erased all the same. Only an erasure reads them: a stateless conversation,
which nothing erases, keeps none (its postings are kept all the same: the scan of other
users' replies reads them). Postings written before these lists existed are named by
nothing but their texts: until the generation of ``fp:listed-since`` (the time of the
first erasure that looked) and the one after it have expired, ``erase_session`` asks for them.
A session's lists have no bound (a long conversation keeps appending) and Redis serves no
one else while a script runs: ``erase_session`` reads them, and the texts' digests it is
given, ``ERASE_SESSION_CHUNK`` digests a script call.

Each user keeps, per generation, the list of its records of several sessions there: the
key ``fp:{generation}:u:{user id hex}``, 8-byte digests with the generation's expiry,
appended to by the registering script wherever it folds that user's records (whoever's
registration folds them: it folds every user with several sessions in a full value).
``erase_user`` reads them as the account is deleted, ``ERASE_USER_CHUNK`` digests a script
call: a user's lists have no bound (a fold appends to them, whoever registers), and Redis
serves no one else while a script runs. Records folded before these lists existed are named
by nothing: they age out.
"""

import math
import struct
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import redis

from ..fingerprint import Posting
from . import scripts
from .base import MAX_RECORDS, SEVERAL, IndexUnavailable

GENERATIONS = 4
RECORD = 20
COMMON = b"*"
# When (Unix seconds) the first erasure found no lists before it: from the generation after
# that one's, every posting is on its session's list. Set once, no TTL.
LISTED_SINCE = "fp:listed-since"
# The most digests of a user's lists one ERASE_USER call reads: some milliseconds of Redis.
# 50,000 in one call held it 0.1-0.2 s, every other user's turn waiting.
ERASE_USER_CHUNK = 2_000
# The same bound for ERASE, over a session's lists and its texts' digests: a session
# listing 50,000 held Redis 0.2-0.4 s in one call, 0.7-0.9 s with as many texts' digests.
ERASE_SESSION_CHUNK = 2_000


@dataclass(frozen=True)
class Layout:
    ttl_seconds: int
    bucket_bits: int

    @property
    def generation_seconds(self) -> int:
        return max(1, self.ttl_seconds // GENERATIONS)

    def generation(self, now: float) -> int:
        return int(now // self.generation_seconds)

    def expire_at(self, generation: int) -> int:
        return (generation + 1) * self.generation_seconds + self.ttl_seconds

    def key(self, digest: bytes, generation: int) -> str:
        """Return the hash key that holds ``digest`` (the scripts derive the same)."""
        bucket = int.from_bytes(digest[:2], "big") >> (16 - self.bucket_bits)
        return f"fp:{generation}:{bucket:x}"


def _record(user_id: int, session_id: uuid.UUID) -> bytes:
    return struct.pack(">I", user_id) + session_id.bytes


def _postings(value: bytes) -> list[Posting] | None:
    # ``value`` holds every live generation's records: one posting per user, the first
    # session seen (a record of several sessions only if it has no other); None once the
    # feature is shared (``*``) or more than MAX_RECORDS users have it.
    if value == COMMON:
        return None
    postings: dict[int, Posting] = {}
    for at in range(0, len(value), RECORD):
        user = int.from_bytes(value[at : at + 4], "big")
        known = postings.get(user)
        if known is None or known.session_id is None:
            session = value[at + 4 : at + RECORD]
            postings[user] = Posting(user, None if session == SEVERAL else _uuid_text(session))
    return None if len(postings) > MAX_RECORDS else list(postings.values())


def _uuid_text(raw: bytes) -> str:
    # str(uuid.UUID(bytes=raw)), without building the object: a third of the time.
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@lru_cache(maxsize=8)
def _redis_client(url: str) -> redis.Redis:
    # One pool per process and URL: it holds connections, never conversation data.
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


class RedisIndex:
    def __init__(self, *, url: str, layout: Layout) -> None:
        self.client = _redis_client(url)
        self.layout = layout
        self._register = self.client.register_script(scripts.REGISTER)
        self._lookup = self.client.register_script(scripts.LOOKUP)
        self._erase = self.client.register_script(scripts.ERASE)
        self._erase_user = self.client.register_script(scripts.ERASE_USER)

    def add(
        self,
        digests: Sequence[bytes],
        *,
        user_id: int,
        session_id: uuid.UUID,
        erasable: bool = True,
    ) -> None:
        """Record that the session introduced each of ``digests``; one round trip. Only
        an ``erasable`` session lists what it added, for ``erase_session``."""
        if not digests:
            return
        generation = self.layout.generation(time.time())
        record = _record(user_id, session_id)
        args = [record, self.layout.expire_at(generation), MAX_RECORDS, generation]
        blob = b"".join(digests)
        bits = self.layout.bucket_bits
        listed = session_id.hex if erasable else ""
        self._call(self._register, args + [bits, blob, SEVERAL, listed])

    def lookup(self, digests: Sequence[bytes]) -> dict[bytes, list[Posting] | None]:
        """Return each digest's postings (None: too many users share it); one round trip."""
        if not digests:
            return {}
        now = self.layout.generation(time.time())
        args = [now - GENERATIONS, now, self.layout.bucket_bits, b"".join(digests)]
        reply, found, at = self._call(self._lookup, args), {}, 0
        for digest in digests:
            size = int.from_bytes(reply[at : at + 2], "big")
            found[digest] = _postings(reply[at + 2 : at + 2 + size])
            at += 2 + size
        return found

    def erase_session(
        self, digests: Sequence[bytes] | None = None, *, session_id: uuid.UUID
    ) -> bool:
        """Remove every posting that the session's lists name, and its postings of
        ``digests``; one round trip unless the lists and ``digests`` come to more than
        ``ERASE_SESSION_CHUNK`` digests (one of ``digests`` counts once a live generation,
        as it is looked up in each). Shared ``*`` entries and records of several sessions
        stay (they age out). Return True, having erased nothing, if postings written before
        the lists existed may still live and ``digests`` is None: only the digests of the
        session's texts name those, so call again with them. Should Redis fail after the
        first call, calling again erases what is left."""
        clock = time.time()
        now = self.layout.generation(clock)
        blob, given = b"".join(digests or ()), "" if digests is None else "1"
        head = [session_id.bytes, now - GENERATIONS, now, self.layout.bucket_bits]
        tail = [session_id.hex, LISTED_SINCE, given, int(clock), self.layout.generation_seconds]
        generation, at, done, first = now - GENERATIONS, 0, 0, "1"
        while generation <= now or done < len(blob):
            # Read at each call, so that a test can make the chunks small.
            chunk = ERASE_SESSION_CHUNK
            # No more than the call can take: each counts once a live generation, rounded up.
            texts = blob[done : done + 8 * math.ceil(chunk / (GENERATIONS + 1))]
            reply = self._call(self._erase, head + [texts] + tail + [generation, at, chunk, first])
            if reply == 1:  # the first call's answer: nothing was erased
                return True
            (generation, at, taken), first = reply, ""
            done += taken
        return False

    def erase_user(self, *, user_id: int) -> None:
        """Remove every record of several of the user's sessions that its lists name; one
        round trip unless the lists hold more than ``ERASE_USER_CHUNK`` digests. Its
        sessions' own records are ``erase_session``'s; records folded before the lists
        existed stay (they age out), as do shared ``*`` entries."""
        now = self.layout.generation(time.time())
        user = struct.pack(">I", user_id)
        resume: list | None = [now - GENERATIONS, 0]
        while resume is not None:
            generation, offset = resume
            args = [user, generation, now, self.layout.bucket_bits, SEVERAL, offset]
            # Read at each call, so that a test can make the chunks small.
            resume = self._call(self._erase_user, args + [ERASE_USER_CHUNK])

    def purge_expired(self) -> int:
        """Return 0: every key of the index expires with its generation, by Redis itself."""
        return 0

    def _call(self, script, args: list) -> list:
        try:
            return script(keys=[], args=args)
        except redis.exceptions.RedisError as exc:
            raise IndexUnavailable("the fingerprint index (Redis) is unavailable") from exc
