"""History only in Redis, under keys that expire with the session.

All keys of one session share one Redis Cluster hash slot (the ``{<session id>}`` hash
tag), so each write is one atomic Lua script on a cluster too:

- ``session:{<id>}:messages``: hash, seq -> the message as JSON, naming owner and session
- ``session:{<id>}:turns``: hash, ``<turn id>:<role>`` -> seq (one message per turn and role)
- ``session:{<id>}:owner``: the owner's id

Each message's JSON also keeps ``a``, the highest fence (``reply_rewrite``: a value its
writer took while holding the session's lock) that wrote it or found it there: a write here
outlives a writer's lost commit, so one that stalled past its lock could otherwise write
over, take over or remove what a writer that locked after it showed.

Every key expires when the session does, and is pushed back on each write. Losing Redis
loses the history: the trade-off ``HISTORY_STORE=redis`` chooses.
"""

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import redis.exceptions
from django.utils import timezone
from django_redis import get_redis_connection

from .base import (
    BaseHistoryStore,
    DuplicateReply,
    MessageMissing,
    ReplyOvertaken,
    SeqTaken,
    SessionLike,
    StoredMessage,
    StoreUnavailable,
)

# Message ids are integers, like the database's; a counter of their own (in its own
# slot: it holds no conversation data) numbers them.
MESSAGE_IDS_KEY = "history:message_ids"

# KEYS: messages, turns, owner. ARGV: seq, message JSON, turn field, owner, expire-at,
# turn id, fence.
# Returns 1 when written, -1 when the session's keys belong to another owner, 0 when the
# seq is taken, or the JSON of the message the turn already has for this role; that one
# is raised to this fence first (REWRITE's check), so that an earlier writer, stalled,
# cannot write over it once this run decided it (even if this run then leaves it as it is).
#
# A seq is taken as the database's unique (session, seq) takes it, with one exception the
# database never sees: the session's newest message may be one that a run wrote before
# its database commit failed (a reply, or an accept whose undo failed too). No reader sees
# it (it is past the session's counter) and the next message takes its seq: it is written
# over. What shows a message was committed: a message after it (taken under a counter
# that had moved past it), or the appending turn's own (the turn exists, so its user
# message was committed), or a fence as high as the writer's (the message was written by a
# writer that locked after it: this writer stalled past its lock, its own commit will fail,
# and that message may have been committed and read). The one fault this cannot tell from
# an uncommitted message is a counter behind by exactly one message of another turn: that
# one is written over.
APPEND = """
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[4] then return -1 end
local existing = redis.call('HGET', KEYS[2], ARGV[3])
if existing then
  local stored = redis.call('HGET', KEYS[1], existing)
  -- The seq may since hold another turn's message (a run whose commit failed left it).
  if stored then
    local message = cjson.decode(stored)
    if message['t'] == ARGV[6] then
      if (message['a'] or 0) < tonumber(ARGV[7]) then
        message['a'] = tonumber(ARGV[7])
        redis.call('HSET', KEYS[1], existing, cjson.encode(message))
      end
      return stored
    end
  end
end
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then
  local message = cjson.decode(held)
  -- Only a writer that locked after the held message's (a higher fence; 0: no fences,
  -- SQLite) takes it over: a run or an accept stalled past its lock must not write over a
  -- message a later accept committed and its reader saw.
  local fence = tonumber(ARGV[7])
  if message['t'] == ARGV[6]
      or redis.call('HEXISTS', KEYS[1], tostring(tonumber(ARGV[1]) + 1)) == 1
      or (fence > 0 and (message['a'] or 0) >= fence) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('SET', KEYS[3], ARGV[4])
for i = 1, 3 do redis.call('EXPIREAT', KEYS[i], ARGV[5]) end
return 1
"""

# KEYS: messages, turns. ARGV: turn fields. Returns the messages those fields point to.
TURN_MESSAGES = """
local out = {}
for _, field in ipairs(ARGV) do
  local seq = redis.call('HGET', KEYS[2], field)
  if seq then
    local stored = redis.call('HGET', KEYS[1], seq)
    if stored then table.insert(out, stored) end
  end
end
return out
"""

# KEYS: messages, turns. ARGV: turn id, fence, then turn fields. Removes the turn's messages
# and their index entries. A field's seq may since hold another turn's message (this turn's
# removal committed first, and the next message took its seq): that one stays. So does one
# of a higher fence than the remover's (0: no fencing): a writer that locked the turn after
# the remover wrote it (the remover stalled past its lock; the run's reply may be shown).
DISCARD = """
local fence = tonumber(ARGV[2])
for i = 3, #ARGV do
  local seq = redis.call('HGET', KEYS[2], ARGV[i])
  if seq then
    local stored = redis.call('HGET', KEYS[1], seq)
    local message = stored and cjson.decode(stored)
    if not (message and fence > 0 and (message['a'] or 0) > fence) then
      if message and message['t'] == ARGV[1] then redis.call('HDEL', KEYS[1], seq) end
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
  end
end
return 1
"""

# KEYS: messages, turns, owner. ARGV: turn field, new text, new status, owner, turn id,
# fence.
# Returns 1 when rewritten, -1 when the session's keys belong to another owner, 0 when the
# turn has no such message: its field points to nothing, or to a seq that since holds
# another turn's message (a run whose commit failed left the field), which is left alone;
# 2 when a higher fence wrote or found the message, which is left alone.
REWRITE = """
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[4] then return -1 end
local seq = redis.call('HGET', KEYS[2], ARGV[1])
if not seq then return 0 end
local stored = redis.call('HGET', KEYS[1], seq)
if not stored then return 0 end
local message = cjson.decode(stored)
if message['t'] ~= ARGV[5] then return 0 end
if (message['a'] or 0) > tonumber(ARGV[6]) then return 2 end
message['a'] = tonumber(ARGV[6])
message['c'] = ARGV[2]
message['st'] = ARGV[3]
redis.call('HSET', KEYS[1], seq, cjson.encode(message))
return 1
"""


def _keys(session_id: uuid.UUID) -> tuple[str, str, str]:
    tag = f"session:{{{session_id}}}"
    return f"{tag}:messages", f"{tag}:turns", f"{tag}:owner"


def _field(turn_id: uuid.UUID, role: str) -> str:
    return f"{turn_id}:{role}"


def _encode(message: StoredMessage, fence: int) -> str:
    return json.dumps(
        {
            "a": fence,
            "id": message.id,
            "q": message.seq,
            "r": message.role,
            "c": message.content,
            "st": message.status,
            "at": message.created_at.isoformat(),
            "t": str(message.turn_id),
            "s": str(message.session_id),
            "u": message.user_id,
        },
        separators=(",", ":"),
    )


def _decode(raw: bytes | str) -> StoredMessage:
    value = json.loads(raw)
    return StoredMessage(
        id=value["id"],
        seq=value["q"],
        role=value["r"],
        content=value["c"],
        status=value["st"],
        created_at=datetime.fromisoformat(value["at"]),
        turn_id=uuid.UUID(value["t"]),
        session_id=uuid.UUID(value["s"]),
        user_id=value["u"],
    )


@contextmanager
def _neutral() -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise StoreUnavailable("the Redis history store did not answer") from exc


def _live(session: SessionLike, messages: list[StoredMessage]) -> list[StoredMessage]:
    # A message past the session's counter was written by a run whose database commit
    # then failed: it was never delivered, and the next message takes its number.
    return sorted((m for m in messages if m.seq < session.next_seq), key=lambda m: m.seq)


class HistoryStore(BaseHistoryStore):
    keeps_outside_the_database = True

    def _client(self):
        return get_redis_connection("default")

    def _append(self, session, *, turn_id, seq, role, content, status, fence=0) -> StoredMessage:
        with _neutral():
            client = self._client()
            message = StoredMessage(
                id=int(client.incr(MESSAGE_IDS_KEY)),
                seq=seq,
                role=role,
                content=content,
                status=status,
                created_at=timezone.now(),
                turn_id=turn_id,
                session_id=session.pk,
                user_id=session.owner_id,
            )
            outcome = client.register_script(APPEND)(
                keys=_keys(session.pk),
                args=[
                    seq,
                    _encode(message, fence),
                    _field(turn_id, role),
                    session.owner_id,
                    int(session.expires_at.timestamp()) + 1,
                    str(turn_id),
                    fence,
                ],
            )
        if outcome == 1:
            return message
        if outcome == -1:
            raise self._foreign(session)  # the session's keys name another owner
        if outcome == 0:
            raise SeqTaken(f"seq {seq} of session {session.pk} is taken")
        raise DuplicateReply(self._checked(session, [_decode(outcome)])[0])

    def _turn_messages(self, session, turn_id: uuid.UUID) -> list[StoredMessage]:
        fields = [_field(turn_id, "user"), _field(turn_id, "assistant")]
        with _neutral():
            found = self._client().register_script(TURN_MESSAGES)(
                keys=_keys(session.pk)[:2], args=fields
            )
        return _live(session, [_decode(raw) for raw in found])

    def _all(self, session) -> list[StoredMessage]:
        with _neutral():
            found = self._client().hvals(_keys(session.pk)[0])
        return _live(session, [_decode(raw) for raw in found])

    def _page(self, session, offset: int, limit: int) -> list[StoredMessage]:
        # seq runs 1, 2, 3... without gaps per session, so a page is a range of fields.
        last = min(offset + limit, session.next_seq - 1)
        if last <= offset:
            return []
        with _neutral():
            found = self._client().hmget(_keys(session.pk)[0], list(range(offset + 1, last + 1)))
        return _live(session, [_decode(raw) for raw in found if raw is not None])

    def _discard_turn(self, session, turn_id: uuid.UUID, roles, fence: int = 0) -> None:
        fields = [_field(turn_id, role) for role in roles]
        with _neutral():
            self._client().register_script(DISCARD)(
                keys=_keys(session.pk)[:2], args=[str(turn_id), fence, *fields]
            )

    def _erase_begin(self, session_ids: list[uuid.UUID]) -> None:
        # A Redis that does not answer now refuses the erasure before anything is erased;
        # the keys go after the rows (``erase``), or a failed DELETE would lose the history.
        with _neutral():
            self._client().ping()

    def _erase(self, session_ids: list[uuid.UUID]) -> None:
        with _neutral():
            pipe = self._client().pipeline(transaction=False)
            for session_id in session_ids:
                pipe.delete(*_keys(session_id))  # one slot per session: one command each
            pipe.execute()

    def _rewrite(
        self, session, turn_id: uuid.UUID, role: str, content: str, status: str, *, fence: int
    ) -> None:
        args = [_field(turn_id, role), content, status, session.owner_id, str(turn_id), fence]
        with _neutral():
            outcome = self._client().register_script(REWRITE)(keys=_keys(session.pk), args=args)
        if outcome == -1:
            raise self._foreign(session)  # the session's keys name another owner
        if outcome == 0:
            raise MessageMissing(f"turn {turn_id} has no {role} message to rewrite")
        if outcome == 2:
            raise ReplyOvertaken()
