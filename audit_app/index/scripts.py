"""The fingerprint index's Lua scripts, run by ``RedisIndex`` (``redis.py`` holds the layout
they share with it: keys ``fp:{generation}:{bucket}``, 20-byte records, ``*``, the
sessions' and users' lists).

Each call runs as one round trip and one atomic step on the Redis server. ``ERASE`` and
``ERASE_USER`` do a bounded part of their work a call: ``RedisIndex.erase_session`` and
``erase_user`` call them until they are done.
"""

# Scripts take the digests as one blob of 8-byte hashes and derive each key and field
# themselves: packing hundreds of arguments costs more client time than the whole lookup.
# (So keys are not declared: on Redis Cluster, give the prefix a hash tag.)
SLOT = """
local function slot(blob, i, g, shift)
  local b = math.floor((string.byte(blob, i) * 256 + string.byte(blob, i + 1)) / 2 ^ shift)
  return 'fp:' .. g .. ':' .. string.format('%x', b), string.sub(blob, i + 2, i + 7)
end
local function user_list(g, u)
  return 'fp:' .. g .. ':u:' .. string.format('%02x%02x%02x%02x', string.byte(u, 1, 4))
end
"""

# The erasures' walk over a session's or a user's lists of digests, generation ``g`` to
# ``g1`` (``name(g)``), from byte ``at`` of the first, handing ``drop`` at most ``budget``
# bytes in all: read by range, never whole, and DEL'ed in the call that reads a list to its
# current end, so that what is APPENDed between two calls is read before the list goes.
# Returns the generation and byte to resume at (past ``g1``: every list done) and the
# budget left.
WALK_LISTS = """
local function walk_lists(name, g, g1, at, budget, drop)
  while g <= g1 do
    local listed = name(g)
    local size = redis.call('STRLEN', listed)
    -- Shorter than where we stopped: it expired or went (another erasure) and may have
    -- started again; reading it again from the start removes nothing twice.
    if size < at then at = 0 end
    if size - at <= budget then
      if size > at then drop(redis.call('GETRANGE', listed, at, size - 1), g) end
      if size > 0 then redis.call('DEL', listed) end
      g, at, budget = g + 1, 0, budget - (size - at)
    elseif budget == 0 then
      -- Not GETRANGE at, at - 1: a negative end counts from the string's end.
      return g, at, 0
    else
      drop(redis.call('GETRANGE', listed, at, at + budget - 1), g)
      return g, at + budget, 0
    end
  end
  return g, 0, budget
end
"""

REGISTER = (
    SLOT
    + """
local rec, expire_at, maxr = ARGV[1], ARGV[2], tonumber(ARGV[3])
local g, shift, blob, several = ARGV[4], 16 - tonumber(ARGV[5]), ARGV[6], ARGV[7]
local listed = 'fp:' .. g .. ':s:' .. ARGV[8]
local user = string.sub(rec, 1, 4)
local mine_all = user .. several
local added = {}
for i = 1, #blob, 8 do
  local key, f = slot(blob, i, g, shift)
  local v = redis.call('HGET', key, f)
  if not v then
    redis.call('HSET', key, f, rec)
    added[#added + 1] = string.sub(blob, i, i + 7)
  elseif v ~= '*' then
    local n, present, users, count = #v / 20, false, 0, {}
    for j = 0, n - 1 do
      local r = string.sub(v, j * 20 + 1, j * 20 + 20)
      if r == rec or r == mine_all then present = true break end
      local u = string.sub(r, 1, 4)
      if not count[u] then users = users + 1 count[u] = 0 end
      count[u] = count[u] + 1
    end
    if not present then
      if not count[user] then users = users + 1 count[user] = 0 end
      count[user] = count[user] + 1
      if users > maxr then
        redis.call('HSET', key, f, '*')
      elseif n < maxr then
        redis.call('HSET', key, f, v .. rec)
        added[#added + 1] = string.sub(blob, i, i + 7)
      else
        -- Full, yet no more than maxr users: each user with several sessions here keeps
        -- one record of them all, in the place of its first, named on that user's list
        -- (a fold is rare: an APPEND each costs little).
        local out = {}
        for j = 0, n - 1 do
          local r = string.sub(v, j * 20 + 1, j * 20 + 20)
          local u = string.sub(r, 1, 4)
          if count[u] == 1 then out[#out + 1] = r
          elseif count[u] > 1 then
            out[#out + 1] = u .. several
            count[u] = 0
            local folded = user_list(g, u)
            if redis.call('APPEND', folded, string.sub(blob, i, i + 7)) == 8 then
              redis.call('EXPIREAT', folded, expire_at)
            end
          end
        end
        if count[user] == 1 then
          out[#out + 1] = rec
          added[#added + 1] = string.sub(blob, i, i + 7)
        end
        redis.call('HSET', key, f, table.concat(out))
      end
    end
  end
  redis.call('EXPIREAT', key, expire_at)
end
-- The session's list of what it added: one APPEND (and its expiry once, when it starts).
-- None for a conversation that nothing erases (ARGV[8] empty): no one would read it.
if #added > 0 and ARGV[8] ~= '' then
  local more = table.concat(added)
  if redis.call('APPEND', listed, more) == #more then redis.call('EXPIREAT', listed, expire_at) end
end
return #blob / 8
"""
)

# One bulk string back, not an array per feature and generation: the client parses a
# nested reply element by element, which cost more than the lookup itself. Per digest, in
# order: a 2-byte length, then ``*`` or the records found in every live generation.
LOOKUP = (
    SLOT
    + """
local g0, g1, shift, blob = tonumber(ARGV[1]), tonumber(ARGV[2]), 16 - tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 1, #blob, 8 do
  local found = {}
  for g = g0, g1 do
    local key, f = slot(blob, i, g, shift)
    local v = redis.call('HGET', key, f)
    if v == '*' then found = {v} break end
    if v then found[#found + 1] = v end
  end
  local v = table.concat(found)
  out[#out + 1] = string.char(math.floor(#v / 256), #v % 256) .. v
end
return table.concat(out)
"""
)

# Erases, in each live generation, the session's records of the digests on its list there
# and of ``blob`` (the digests of its texts). While postings from before the lists may
# live (the generation of ``fp:listed-since``, set by the first call, or the one after it,
# for code still writing without lists during an upgrade, is live), only with the texts'
# digests (ARGV[8] set): without them it returns 1 and erases nothing, so that an
# erasure is whole or not done. A time, not a generation: a new TTL renumbers them.
# Only the first call of an erasure (ARGV[14] set) decides that, before anything goes: the
# calls after it never refuse, so no erasure stops half done by a refusal.
#
# At most ARGV[13] digests a call (by the rounding below, less than a text's digest more),
# so that a long session does not hold up every other user's turn. The lists first, as
# ERASE_USER reads its own: it resumes at byte ARGV[12] of generation ARGV[11]'s list,
# reads by range, never whole, and DELs a list in the call that reads it to its current
# end (what a registration APPENDs between two calls is read before the list goes). Then
# ``blob``, which holds only what this call may take of the texts' digests: each is looked
# up in every live generation, so it counts as many digests (rounded up, so that every
# call takes one). It returns where the next call resumes and how many bytes of ``blob``
# it took: {g, at, taken}, the lists done once g is past ARGV[3]. The budget spans lists
# and blob: short ones, the common case, take one call.
ERASE = (
    SLOT
    + WALK_LISTS
    + """
local session, g0, g1 = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local shift, blob, hex, since_key = 16 - tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local now, generation_seconds = ARGV[9], tonumber(ARGV[10])
local g, at, budget = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]) * 8
if ARGV[14] ~= '' then
  local since = redis.call('GET', since_key)
  if not since then
    since = now
    redis.call('SET', since_key, since)
  end
  local listed_from = math.floor(tonumber(since) / generation_seconds) + 1
  if g0 <= listed_from and ARGV[8] == '' then return 1 end
end
local function drop(digests, g)
  for i = 1, #digests, 8 do
    local key, f = slot(digests, i, g, shift)
    local v = redis.call('HGET', key, f)
    if v and v ~= '*' then
      local kept = ''
      for j = 0, #v / 20 - 1 do
        local r = string.sub(v, j * 20 + 1, j * 20 + 20)
        if string.sub(r, 5, 20) ~= session then kept = kept .. r end
      end
      if kept == '' then redis.call('HDEL', key, f) elseif kept ~= v then
        redis.call('HSET', key, f, kept)
      end
    end
  end
end
local function session_list(g) return 'fp:' .. g .. ':s:' .. hex end
g, at, budget = walk_lists(session_list, g, g1, at, budget, drop)
if g <= g1 then return {g, at, 0} end
local taken = math.min(#blob, math.ceil(budget / (8 * (g1 - g0 + 1))) * 8)
local texts = string.sub(blob, 1, taken)
for live = g0, g1 do drop(texts, live) end
return {g, 0, taken}
"""
)

# Erases, in each live generation from ARGV[2] on, the user's records of several sessions
# that its list there names, and the list: no other record, whoever's (its sessions' own go
# with them). At most ARGV[7] digests a call, so that a long list does not hold up every
# other user's turn: it resumes at byte ARGV[6] of generation ARGV[2]'s list and returns
# where the next call resumes, or false once every list is gone. A list is read by range,
# never whole, and DEL'ed in the call that reads it to its current end: what a fold
# APPENDs between two calls is read before the list goes. The budget spans generations:
# short lists, the common case, take one call for them all.
ERASE_USER = (
    SLOT
    + WALK_LISTS
    + """
local user, g, g1, shift = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), 16 - tonumber(ARGV[4])
local mine_all, at, budget = user .. ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]) * 8
local function drop(folded, g)
  for i = 1, #folded, 8 do
    local key, f = slot(folded, i, g, shift)
    local v = redis.call('HGET', key, f)
    if v and v ~= '*' then
      local kept = {}
      for j = 0, #v / 20 - 1 do
        local r = string.sub(v, j * 20 + 1, j * 20 + 20)
        if r ~= mine_all then kept[#kept + 1] = r end
      end
      kept = table.concat(kept)
      if kept == '' then redis.call('HDEL', key, f) elseif kept ~= v then
        redis.call('HSET', key, f, kept)
      end
    end
  end
end
g, at = walk_lists(function(g) return user_list(g, user) end, g, g1, at, budget, drop)
if g <= g1 then return {g, at} end
return false
"""
)
