"""The Lua scripts behind every write: check that the session lives, then change it.

Each write runs as one script so that the liveness check and the change are
atomic: a write racing ``invalidate()`` or expiry finds the key gone and
reports it, instead of re-creating a key without a TTL. Every script that runs
on a Redis Cluster touches only ``KEYS`` (one key, or two keys in one slot for
``regenerate`` and ``login``). Off a Cluster, a login is one script over the
session and its user's index (:data:`LOGIN`, :data:`LOGIN_NEW`), so it is
indexed, and sessions beyond the user's cap deleted, in the same atomic step. On
a Cluster it indexes first, with a marker that covers the moment until the
session is made (:data:`INDEX`, then :data:`LOGIN_APART` or :data:`CREATE`).

The first command of a request runs through ``OPEN``: it slides the idle
timeout (honouring a per-session timeout and the absolute deadline) and then
performs the request's first operation, all in one round trip. For a session
with an owner (see :mod:`hashsession.users`) it also records the last-seen
time and, about once per half idle timeout, tells the client that the owner's
index entry is due for a refresh (``INDEX``, on the index key).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

__all__ = [
    "CREATE",
    "EVERY",
    "INDEX",
    "JSON_ERROR",
    "LIMIT_ERROR",
    "LIVE",
    "LOGIN",
    "LOGIN_APART",
    "LOGIN_NEW",
    "MARKER",
    "OPEN",
    "OPEN_NEAR",
    "PLAIN",
    "QUICK",
    "REVOKE",
    "SIZE_ERROR",
    "TYPE_ERROR",
    "VALUE_OPS",
    "Script",
    "with_source",
]

LIMIT_ERROR = "HASHSESSION_LIMIT"
#: ``HASHSESSION_TYPE <found> <wanted>``: a value edit met a value of another kind.
TYPE_ERROR = "HASHSESSION_TYPE"
#: ``HASHSESSION_SIZE <bytes>``: a value edit would make the value too large; nothing written.
SIZE_ERROR = "HASHSESSION_SIZE"
#: The stored value a value edit met is not JSON.
JSON_ERROR = "HASHSESSION_JSON"
CREATED_FIELD = "\x00c"
TTL_FIELD = "\x00t"
#: The owner (set by ``login``): NUL and the keyed digest of the user id (a session logged
#: in before ``user_key`` existed holds the id itself, until its index entry is refreshed).
OWNER_FIELD = "\x00u"
#: When the session was last seen: the first command of each request (ms since the epoch).
SEEN_FIELD = "\x00s"
#: Until when (ms) the owner's index entry is known to outlast the session.
INDEXED_FIELD = "\x00i"
#: This session's own cookie lifetime in seconds (0: a browser-session cookie), set by
#: adapters (Flask's ``session.permanent``); the first command of a request returns it.
LIFETIME_FIELD = "\x00k"

# Shared helpers. Reserved fields start with a NUL byte; user fields never do.
# slide() sets `owner` (and `good`) when the owner's index entry must be rewritten, and
# `fresh`, the good-until a new index entry would get; `live` is the session key now;
# `keep`, the session's own cookie lifetime, if it has one.
_STATE = r"""
local owner, good, fresh, live, keep = false, 0, 0, false, false"""
_BARE = r"""
-- Whether the session holds nothing but the core's own bookkeeping (created, timeout,
-- seen, indexed): no user key and no adapter metadata (an owner, flash, CSRF token...).
local function bare(k)
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if not (f == '\0c' or f == '\0t' or f == '\0s' or f == '\0i') then return false end
  end
  return true
end"""
_USERS = r"""
local function users(k)
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.byte(f, 1) ~= 0 then n = n + 1 end
  end
  return n
end"""
_OVER = r"""
-- The first of the new fields that would take the session past lim user keys, or false.
local function over(k, n, lim, fields, removed)
  removed = removed or 0
  if n - removed + #fields <= lim then return false end
  local count = users(k) - removed
  for _, f in ipairs(fields) do
    if redis.call('HEXISTS', k, f) == 0 then
      count = count + 1
      if count > lim then return {err = 'HASHSESSION_LIMIT ' .. f} end
    end
  end
  return false
end"""
_FIELDS = _BARE + _USERS + _OVER
_SLIDE = r"""
-- Slide the TTL; for an owned session, note the visit and whether its index entry is due
-- (it must always outlast the session: it gets idle * 1.5, refreshed once idle / 2 is used up).
-- With extra (a field), its value is read by the same HMGET: m[6] of the second result.
local function slide(k, idle, now, abs, force, extra)
  local m
  if extra then
    m = redis.call('HMGET', k, '\0c', '\0t', '\0u', '\0i', '\0k', extra)
  else
    m = redis.call('HMGET', k, '\0c', '\0t', '\0u', '\0i', '\0k')
  end
  if not m[1] and redis.call('EXISTS', k) == 0 then return false end
  keep = m[5]
  if m[2] then idle = tonumber(m[2]) end
  local ttl, deadline = idle, false
  if abs > 0 and m[1] then
    deadline = tonumber(m[1]) + abs
    local left = deadline - now
    if left <= 0 then
      redis.call('DEL', k)
      return false
    end
    if left < ttl then ttl = left end
  end
  redis.call('PEXPIRE', k, ttl)
  fresh = now + idle + math.floor(idle / 2)
  if deadline and deadline < fresh then fresh = deadline end
  if m[3] then
    redis.call('HSET', k, '\0s', now)
    local known = tonumber(m[4] or 0)
    if known < now + ttl then
      owner, good = m[3], fresh
    elseif force then
      owner, good = m[3], known
    end
  end
  return ttl, m
end
-- The reply of an op that slid the session: {r}, or {r, owner, good, keep} when the
-- owner's index entry is due (its new good-until is recorded first; owner is nil when it
-- is not) or the session has a cookie lifetime of its own (keep; nil when it has not).
local function report(k, r)
  if r == nil then r = false end
  if not owner and not keep then return {r} end
  if owner and redis.call('EXISTS', k) == 1 then redis.call('HSET', k, '\0i', good) end
  return {r, owner, good, keep}
end
"""
_HELPERS = _STATE + _FIELDS + _SLIDE

# The per-user index (see INDEX): put entries in it, prune it, keep its TTL.
# Besides session keys it holds the markers of logins in progress on a Cluster (see
# MARKER): "\0p" .. new key .. "\0" .. old key (or "" for a new session), scored until
# when they hold. No session key starts with a NUL byte.
_INDEX_LIB = r"""
local function unindex(k, members)
  for i = 1, #members, 1000 do
    redis.call('ZREM', k, unpack(members, i, math.min(i + 999, #members)))
  end
end
local function marker(m) return string.byte(m, 1) == 0 end
-- The live markers: by new key, {marker, old key or ''}; and the new keys, in score order.
local function pending(k, now)
  local by, order = {}, {}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', k, now, '+inf')) do
    if marker(m) then
      local cut = string.find(m, '\0', 3, true)
      if cut then
        local n = string.sub(m, 3, cut - 1)
        by[n] = {m, string.sub(m, cut + 1)}
        order[#order + 1] = n
      end
    end
  end
  return by, order
end
-- Prune entries scored past now; a marker goes with its new key's entry.
local function prune(k, now)
  if redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. now) == 0 then return end
  local by, order = pending(k, now)
  local orphans = {}
  for _, n in ipairs(order) do
    if not redis.call('ZSCORE', k, n) then orphans[#orphans + 1] = by[n][1] end
  end
  unindex(k, orphans)
end
-- Prune entries past now; remove `ended` (sessions known gone for good, or moved: their
-- markers go too) and `dead` (sessions found missing: one a login is still making, under
-- a live marker, stays); add {score, member, ...} (a score only ever rises); and honour
-- `cap` (markers never count): answer the members beyond it that expire soonest (never
-- one added here, nor `spare`, which does not count). With `kill`, their sessions are
-- deleted and they leave the index here (but for one found missing under a live
-- marker); else the caller deletes, then unindexes them.
local function put(k, now, cap, spare, ended, dead, adds, kill)
  prune(k, now)
  local marks, nmarks = {}, 0
  if #ended > 0 or #dead > 0 or cap > 0 then
    local order
    marks, order = pending(k, now)
    nmarks = #order
  end
  local gone = {}
  for _, m in ipairs(ended) do
    gone[#gone + 1] = m
    if marks[m] then
      gone[#gone + 1] = marks[m][1]
      marks[m] = nil
      nmarks = nmarks - 1
    end
  end
  for _, m in ipairs(dead) do
    if not marks[m] then gone[#gone + 1] = m end
  end
  unindex(k, gone)
  local added = {}
  for j = 1, #adds, 2 do
    local m = adds[j + 1]
    local cur = redis.call('ZSCORE', k, m)
    if not cur or tonumber(cur) < tonumber(adds[j]) then
      redis.call('ZADD', k, adds[j], m)
      if not cur and marker(m) then nmarks = nmarks + 1 end
    end
    added[m] = true
  end
  local out, excess = {}, 0
  if cap > 0 then
    excess = redis.call('ZCARD', k) - nmarks - cap
    if spare ~= '' and redis.call('ZSCORE', k, spare) then excess = excess - 1 end
  end
  if excess > 0 then
    for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
      if #out == excess then break end
      if not marker(m) and not added[m] and m ~= spare then out[#out + 1] = m end
    end
    if kill then
      gone = {}
      for _, m in ipairs(out) do
        if redis.call('DEL', m) == 1 then
          gone[#gone + 1] = m
          if marks[m] then gone[#gone + 1] = marks[m][1] end
        elseif not marks[m] then
          gone[#gone + 1] = m
        end
      end
      unindex(k, gone)
    end
  end
  return out
end
-- Prune, and let the key expire with its last entry.
local function expire(k, now)
  prune(k, now)
  local last = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIRE', k, math.max(1, tonumber(last[2]) - tonumber(now))) end
end
"""

# Value edits (append, add, discard, set_in, delete_in) change one JSON value in place.
# They work on its text and never decode it: cjson in Redis 6.2 prints numbers with 14
# significant digits and turns [] into {}, so a decode/encode round trip would change what
# the Python codec wrote (and building Lua tables is slow). An array's or object's text is
# its "body" between the brackets; members (items, or "key":value pairs) are kept byte for
# byte, new ones come encoded by the Python codec, and the result is joined in its compact
# form. The common cases cost no Lua loop over the members: append counts them with C-level
# gsub passes, and the others only split the body when the item's text occurs in it.
_JSON = r"""
local function trimmed(s, i, j)
  i = string.find(s, '[^ \t\r\n]', i)
  if not i or i > j then return '' end
  local b = string.byte(s, j)
  while b == 32 or b == 9 or b == 10 or b == 13 do
    j = j - 1
    b = string.byte(s, j)
  end
  return string.sub(s, i, j)
end
local kinds = {['['] = 'list', ['{'] = 'dict', ['"'] = 'str', t = 'bool', f = 'bool', n = 'null'}
-- The body of field f if it holds an array (open '[') or an object (open '{'); nil if the
-- field is absent; false and the error reply for any other value.
local function body_of(k, f, open, close, wanted)
  local s = redis.call('HGET', k, f)
  if not s then return nil end
  local i = string.find(s, '[^ \t\r\n]')
  local first = i and string.sub(s, i, i)
  if first ~= open then
    if not first then return false, {err = 'HASHSESSION_JSON'} end
    return false, {err = 'HASHSESSION_TYPE ' .. (kinds[first] or 'number') .. ' ' .. wanted}
  end
  local j = #s
  while string.find(string.sub(s, j, j), '[ \t\r\n]') do j = j - 1 end
  if string.sub(s, j, j) ~= close then return false, {err = 'HASHSESSION_JSON'} end
  return trimmed(s, i + 1, j - 1)
end
-- For a write that may create field f (ARGV[a] is the key limit): the body of its array
-- or object, '' if absent; or false and the reply to give (the session gone: false; a
-- limit; a value of another kind).
local function body_to_write(k, a, f, open, close, wanted)
  local n = redis.call('HLEN', k)
  if n == 0 then return false, false end
  local body, bad = body_of(k, f, open, close, wanted)
  if bad then return false, bad end
  if body then return body end
  local full = over(k, n, tonumber(ARGV[a]), {f})
  if full then return false, full end
  return ''
end
-- Whether nested arrays and objects in body can be skipped by %b (no string in it holds a
-- bracket or a brace).
local function nestable(body)
  if string.find(body, '\\', 1, true) then body = string.gsub(body, '\\.', '') end
  local _, all = string.gsub(body, '[%[%]{}]', '')
  if all == 0 then return true end
  local _, outside = string.gsub(string.gsub(body, '"[^"]*"', ''), '[%[%]{}]', '')
  return all == outside
end
-- The position of the first comma between members of body at or after j, or nil.
local function comma(body, j, skip)
  local depth = 0
  while true do
    local p = string.find(body, '[%[%]{},"]', j)
    if not p then return nil end
    local c = string.byte(body, p)
    j = p + 1
    if c == 34 then  -- a string: skip to its closing quote
      repeat
        local e = string.find(body, '["\\]', j)
        if not e then return nil end
        local quote = string.byte(body, e) == 34
        j = e + (quote and 1 or 2)
      until quote
    elseif (c == 91 or c == 123) and skip and depth == 0 then
      local _, e = string.find(body, c == 91 and '%b[]' or '%b{}', p)
      if not e then return nil end
      j = e + 1
    elseif c == 91 or c == 123 then
      depth = depth + 1
    elseif c == 93 or c == 125 then
      depth = depth - 1
    elseif depth == 0 then
      return p
    end
  end
end
-- The members of body.
local function split(body)
  local out, start, skip = {}, 1, nestable(body)
  if body == '' then return out end
  while true do
    local p = comma(body, start, skip)
    if not p then
      out[#out + 1] = trimmed(body, start, #body)
      return out
    end
    out[#out + 1] = trimmed(body, start, p - 1)
    start = p + 1
  end
end
-- body without its first d members.
local function after(body, d)
  local start = 1
  for _ = 1, d do
    local p = comma(body, start, false)
    if not p then return '' end
    start = p + 1
  end
  return trimmed(body, start, #body)
end
-- Whether plain searches tell body's members apart: no nested arrays or objects, no
-- escapes, no whitespace around commas (a compact list of numbers, strings, true, false,
-- null). Then f = ',' .. body .. ',' frames every member with commas.
local function flat(body)
  return not (string.find(body, '[%[{\\]') or string.find(body, '%s,') or string.find(body, ',%s'))
end
-- Where members equal to item start in f, a framed flat body (the first only, if once).
local function hits(f, item, once)
  local out, j, n, quotes, seen = {}, 1, #item, 0, 1
  while true do
    local p = string.find(f, item, j, true)
    if not p then return out end
    if string.byte(f, p - 1) == 44 and string.byte(f, p + n) == 44 then
      local _, q = string.gsub(string.sub(f, seen, p - 1), '"', '')
      quotes, seen = quotes + q, p
      if quotes % 2 == 0 then  -- not inside a string
        out[#out + 1] = p
        if once then return out end
      end
    end
    j = p + 1
  end
end
-- How many members body has, from C-level passes: drop escapes, then strings, then
-- nested arrays and objects, and count the commas left.
local function count(body)
  if body == '' then return 0 end
  if string.find(body, '\\', 1, true) then body = string.gsub(body, '\\.', '') end
  body = string.gsub(body, '"[^"]*"', '0')
  body = string.gsub(body, '%b[]', '0')
  body = string.gsub(body, '%b{}', '0')
  local _, commas = string.gsub(body, ',', ',')
  return commas + 1
end
-- Store open .. body .. close in field f, unless that is over size bytes; then reply r.
local function put(k, f, open, body, close, size, r)
  local text = open .. body .. close
  if #text > size then return {err = 'HASHSESSION_SIZE ' .. #text} end
  redis.call('HSET', k, f, text)
  return r
end
local function joined(a, b)
  if a == '' then return b end
  if b == '' then return a end
  return a .. ',' .. b
end
-- The index of the member of an object's members whose key is the JSON text sub, or nil.
local function find_key(members, sub)
  for i, m in ipairs(members) do
    if string.sub(m, 1, #sub) == sub and string.find(m, '^[ \t\r\n]*:', #sub + 1) then
      return i
    end
  end
  return nil
end
"""

# Each operation is a Lua function of the key and the ARGV index its arguments
# start at. Writes answer false when the session key is gone.
_OPS: dict[str, str] = {
    # limit, field, value, field, value, ...
    "set": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local fields = {}
  for j = a + 1, #ARGV, 2 do fields[#fields + 1] = ARGV[j] end
  local full = over(k, n, tonumber(ARGV[a]), fields)
  if full then return full end
  redis.call('HSET', k, unpack(ARGV, a + 1))
  return 1
end""",
    # limit, field, amount
    "incr": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local full = over(k, n, tonumber(ARGV[a]), {ARGV[a + 1]})
  if full then return full end
  return redis.call('HINCRBY', k, ARGV[a + 1], ARGV[a + 2])
end""",
    # Redis adds in long double, which could store a number no double (nor JSON reader)
    # holds: a sum beyond the double range is refused with HINCRBYFLOAT's own error.
    "incr_float": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local full = over(k, n, tonumber(ARGV[a]), {ARGV[a + 1]})
  if full then return full end
  local cur = tonumber(redis.call('HGET', k, ARGV[a + 1]) or '0')
  if cur and math.abs(cur + tonumber(ARGV[a + 2])) == math.huge then
    return redis.error_reply('ERR increment would produce NaN or Infinity')
  end
  return redis.call('HINCRBYFLOAT', k, ARGV[a + 1], ARGV[a + 2])
end""",
    # limit, field, value -> {1 if this stored the value, else 0; the value now stored}
    "setdefault": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local cur = redis.call('HGET', k, ARGV[a + 1])
  if cur then return {0, cur} end
  local full = over(k, n, tonumber(ARGV[a]), {ARGV[a + 1]})
  if full then return full end
  redis.call('HSET', k, ARGV[a + 1], ARGV[a + 2])
  return {1, ARGV[a + 2]}
end""",
    # reserved field, item, '1' to skip an item already queued -> 1 if appended, else 0
    "push": r"""function(k, a)
  if redis.call('EXISTS', k) == 0 then return false end
  local f, item = ARGV[a], ARGV[a + 1]
  local cur = redis.call('HGET', k, f)
  if not cur then
    redis.call('HSET', k, f, item)
    return 1
  end
  if ARGV[a + 2] == '1' then
    for line in string.gmatch(cur, '[^\n]+') do
      if line == item then return 0 end
    end
  end
  redis.call('HSET', k, f, cur .. '\n' .. item)
  return 1
end""",
    # limit, size, field, max_len (0: none), items... -> the list's new length
    "append": r"""function(k, a)
  local f, cap, first = ARGV[a + 2], tonumber(ARGV[a + 3]), a + 4
  local body, reply = body_to_write(k, a, f, '[', ']', 'list')
  if not body then return reply end
  local had, added = count(body), #ARGV - first + 1
  local total = had + added
  if cap > 0 and total > cap then  -- keep the newest cap items
    if total - cap >= had then
      body, first = '', #ARGV - cap + 1
    else
      body = after(body, total - cap)
    end
    total = cap
  end
  body = joined(body, table.concat(ARGV, ',', first, #ARGV))
  return put(k, f, '[', body, ']', tonumber(ARGV[a + 1]), total)
end""",
    # limit, size, field, item -> 1 if appended, 0 if an item of the same text is there
    "add": r"""function(k, a)
  local f, item = ARGV[a + 2], ARGV[a + 3]
  local body, reply = body_to_write(k, a, f, '[', ']', 'list')
  if not body then return reply end
  if string.find(body, item, 1, true) then
    if flat(body) then
      if #hits(',' .. body .. ',', item, true) > 0 then return 0 end
    else
      for _, m in ipairs(split(body)) do
        if m == item then return 0 end
      end
    end
  end
  return put(k, f, '[', joined(body, item), ']', tonumber(ARGV[a + 1]), 1)
end""",
    # field, item -> 1 if items of that text were removed (all of them), else 0
    "discard": r"""function(k, a)
  local f, item = ARGV[a], ARGV[a + 1]
  local body, bad = body_of(k, f, '[', ']', 'list')
  if bad then return bad end
  if not body or not string.find(body, item, 1, true) then return 0 end
  local kept = {}
  if flat(body) then
    local framed, from = ',' .. body .. ',', 1
    for _, p in ipairs(hits(framed, item)) do
      kept[#kept + 1] = string.sub(framed, from, p - 1)
      from = p + #item + 1
    end
    if from == 1 then return 0 end
    kept[#kept + 1] = string.sub(framed, from)
    return put(k, f, '[', string.sub(table.concat(kept), 2, -2), ']', math.huge, 1)
  end
  local list = split(body)
  for _, m in ipairs(list) do
    if m ~= item then kept[#kept + 1] = m end
  end
  if #kept == #list then return 0 end
  return put(k, f, '[', table.concat(kept, ','), ']', math.huge, 1)
end""",
    # limit, size, field, sub-key (as JSON text), value -> 1
    "set_in": r"""function(k, a)
  local f, sub = ARGV[a + 2], ARGV[a + 3]
  local pair = sub .. ':' .. ARGV[a + 4]
  local body, reply = body_to_write(k, a, f, '{', '}', 'dict')
  if not body then return reply end
  if string.find(body, sub, 1, true) then
    local members = split(body)
    local at = find_key(members, sub)
    if at then
      members[at] = pair
      return put(k, f, '{', table.concat(members, ','), '}', tonumber(ARGV[a + 1]), 1)
    end
  end
  return put(k, f, '{', joined(body, pair), '}', tonumber(ARGV[a + 1]), 1)
end""",
    # field, sub-key (as JSON text) -> 1 if it was there and is removed, else 0
    "delete_in": r"""function(k, a)
  local f, sub = ARGV[a], ARGV[a + 1]
  local body, bad = body_of(k, f, '{', '}', 'dict')
  if bad then return bad end
  if not body or not string.find(body, sub, 1, true) then return 0 end
  local members = split(body)
  local at = find_key(members, sub)
  if not at then return 0 end
  table.remove(members, at)
  return put(k, f, '{', table.concat(members, ','), '}', math.huge, 1)
end""",
    # field -> the value it had, or false; {value} when that emptied the session, which
    # is then deleted (an emptied session ends, as in Flask and starsessions)
    "pop": r"""function(k, a)
  local v = redis.call('HGET', k, ARGV[a])
  if not v then return v end
  redis.call('HDEL', k, ARGV[a])
  if bare(k) then
    redis.call('DEL', k)
    return {v}
  end
  return v
end""",
    # -> how many user fields have a UTF-8 name (what iterating lists: others are skipped)
    "len": r"""function(k, a)
  local function utf8(f)
    if not string.find(f, '[\128-\255]') then return true end
    local i, n = 1, #f
    while i <= n do
      local c = string.byte(f, i)
      if c < 128 then
        i = i + 1
      else
        local size, lo, hi
        if c >= 194 and c <= 223 then size, lo, hi = 2, 128, 191
        elseif c == 224 then size, lo, hi = 3, 160, 191
        elseif c == 237 then size, lo, hi = 3, 128, 159
        elseif c >= 225 and c <= 239 then size, lo, hi = 3, 128, 191
        elseif c == 240 then size, lo, hi = 4, 144, 191
        elseif c == 244 then size, lo, hi = 4, 128, 143
        elseif c >= 241 and c <= 243 then size, lo, hi = 4, 128, 191
        else return false end
        if i + size - 1 > n then return false end
        local c2 = string.byte(f, i + 1)
        if c2 < lo or c2 > hi then return false end
        for j = i + 2, i + size - 1 do
          local cj = string.byte(f, j)
          if cj < 128 or cj > 191 then return false end
        end
        i = i + size
      end
    end
    return true
  end
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.byte(f, 1) ~= 0 and utf8(f) then n = n + 1 end
  end
  return n
end""",
    "clear": r"""function(k, a)
  local doomed = {}
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.byte(f, 1) ~= 0 then doomed[#doomed + 1] = f end
  end
  for i = 1, #doomed, 1000 do
    redis.call('HDEL', k, unpack(doomed, i, math.min(i + 999, #doomed)))
  end
  return #doomed
end""",
    # limit, m, m x (field, '1'|'0' present, value), then (field, 's'|'d', value)...
    # -> 1 when every expectation held and the changes were made, 0 on a conflict
    "cas": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local j = a + 2
  for _ = 1, tonumber(ARGV[a + 1]) do
    local cur = redis.call('HGET', k, ARGV[j])
    if ARGV[j + 1] == '1' then
      if cur ~= ARGV[j + 2] then return 0 end
    elseif cur then
      return 0
    end
    j = j + 3
  end
  local sets, fields, dels = {}, {}, {}
  for x = j, #ARGV, 3 do
    if ARGV[x + 1] == 's' then
      fields[#fields + 1] = ARGV[x]
      sets[#sets + 1] = ARGV[x]
      sets[#sets + 1] = ARGV[x + 2]
    else
      dels[#dels + 1] = ARGV[x]
    end
  end
  if #sets > 0 then
    local removed = 0
    for _, f in ipairs(dels) do removed = removed + redis.call('HEXISTS', k, f) end
    local full = over(k, n, tonumber(ARGV[a]), fields, removed)
    if full then return full end
  end
  if #dels > 0 then redis.call('HDEL', k, unpack(dels)) end
  if #sets > 0 then redis.call('HSET', k, unpack(sets)) end
  return 1
end""",
    # new idle ms or '', default idle ms, now ms, absolute ms -> the TTL applied
    # (as {ttl} or {ttl, owner, good}: see report())
    "touch": r"""function(k, a)
  if redis.call('EXISTS', k) == 0 then return false end
  if ARGV[a] ~= '' then redis.call('HSET', k, '\0t', ARGV[a]) end
  return slide(k, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
end""",
    # idle ms, now ms, absolute ms; KEYS[2] is the new key, in the same slot.
    # 1 (and an owner's index entry is always reported), 0 if the new key exists.
    "rename": r"""function(k, a)
  if redis.call('EXISTS', k) == 0 then return false end
  if redis.call('RENAMENX', k, KEYS[2]) == 0 then return 0 end
  live = KEYS[2]
  slide(live, tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), true)
  return 1
end""",
    # field -> 1 if it was there, else 0; {1} when that emptied the session, which is
    # then deleted
    "delete": r"""function(k, a)
  if redis.call('HDEL', k, ARGV[a]) == 0 then return 0 end
  if bare(k) then
    redis.call('DEL', k)
    return {1}
  end
  return 1
end""",
    # reads, needed only as the first command of a request
    "get": r"""function(k, a) return redis.call('HGET', k, ARGV[a]) end""",
    "has": r"""function(k, a) return redis.call('HEXISTS', k, ARGV[a]) end""",
    "keys": r"""function(k, a) return redis.call('HKEYS', k) end""",
    "all": r"""function(k, a) return redis.call('HGETALL', k) end""",
    "hmget": r"""function(k, a) return redis.call('HMGET', k, unpack(ARGV, a)) end""",
    "noop": r"""function(k, a) return 1 end""",
}


class Script(NamedTuple):
    """A Lua script and the SHA1 that ``EVALSHA`` names it by."""

    name: str
    source: str
    sha: str


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


#: The operations that edit one JSON value in place (they need the ``_JSON`` helpers).
VALUE_OPS = ("append", "add", "discard", "set_in", "delete_in")


def _live(name: str) -> Script:
    helpers = _HELPERS + _JSON if name in VALUE_OPS else _HELPERS
    return _script(name, f"{helpers}\nlocal op = {_OPS[name]}\nreturn op(KEYS[1], 1)\n")


def _live_reporting(name: str) -> Script:
    """A live script whose op slides the session, so it reports a due index entry."""
    body = "live = KEYS[1]\nlocal r = op(KEYS[1], 1)\nif not r then return false end\n"
    return _script(name, f"{_HELPERS}\nlocal op = {_OPS[name]}\n{body}return report(live, r)\n")


#: Writes once the session is known to live in this request: ``EVALSHA sha 1 key args...``.
LIVE: dict[str, Script] = {
    name: _live(name)
    for name in (
        "set",
        "incr",
        "incr_float",
        "setdefault",
        "push",
        "pop",
        "delete",
        "len",
        "clear",
        "cas",
        *VALUE_OPS,
    )
}
LIVE["touch"] = _live_reporting("touch")
LIVE["rename"] = _live_reporting("rename")


def _branches(names: list[str]) -> str:
    ordered = sorted(names, key=lambda n: _FIRST.index(n) if n in _FIRST else len(_FIRST))
    return "\n".join(
        f"{'if' if n == 0 else 'elseif'} name == {name!r} then r = ({_OPS[name]})(k, 5)"
        for n, name in enumerate(ordered)
    )


def _open_source() -> str:
    """``OPEN``: slide, then one branch per operation, so that a call defines only what the
    operation it runs needs (a read: its own closure; a write: the field helpers too; a
    value edit: the JSON helpers too), not a table of every operation."""
    uses_fields = re.compile(r"\b(bare|users|over)\(")
    helped = [n for n in _OPS if n not in VALUE_OPS and uses_fields.search(_OPS[n])]
    plain = [n for n in _OPS if n not in VALUE_OPS and n not in helped]
    edits = ",\n".join(f"  [{name!r}] = {_OPS[name]}" for name in VALUE_OPS)
    return (
        _STATE
        + _SLIDE
        + r"""
local k = KEYS[1]
live = k
if not slide(k, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then return false end
local name, r = ARGV[4], nil
"""
        + _branches(plain)
        + "\nelse\n"
        + _FIELDS
        + "\n"
        + _branches(helped)
        + "\nelse\n"
        + _JSON
        + "local ops = {\n"
        + edits
        + "\n}\nr = ops[name](k, 5)\nend\nend\n"
        + r"""if type(r) == 'table' and r.err then return r end
return report(live, r)
"""
    )


#: The operations a request most often starts with, tested first by ``OPEN``.
_FIRST = ("get", "set", "has", "incr", "delete", "all", "hmget", "keys")

#: The first command of a request: idle ms, now ms, absolute ms, op name, op args.
#: Answers false when the session is gone, else an array with the op's reply, followed by
#: the owner and the index entry's new good-until when that entry is due for a refresh.
OPEN = _script("open", _open_source())

#: The quick first commands of a request (``QUICK[op]``, for ``get``, ``has``, ``set`` of
#: one field, ``incr`` by an int and ``delete``): what ``OPEN`` does for that one
#: operation, with one ``HMGET`` reading the metadata and the field together and no
#: closures beyond what the operation needs (the server runs about half the Lua per
#: request). Arguments: idle ms, now ms, absolute ms, then the operation's own. The reply
#: is the operation's bare result for a plain session (a created-at, and no timeout,
#: owner or cookie lifetime of its own; ``get``: the value, or 0 for a missing field),
#: ``OPEN``'s table ``{r, owner, good, keep}`` for any other, and false when the session
#: is gone.
QUICK: dict[str, Script] = {}


def _quick(name: str, field: str, body: str, helpers: str = "") -> Script:
    return _script(
        f"quick_{name}",
        _STATE
        + helpers
        + _SLIDE
        + r"""
local k = KEYS[1]
local ttl, m = slide(k, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), false, """
        + field
        + r""")
if not ttl then return false end
"""
        + body
        + r"""
if m[1] and not m[2] and not m[3] and not keep then return r end
if r == 0 and bare_zero then r = false end
return report(k, r)
""",
    )


QUICK["get"] = _quick("get", "ARGV[4]", "local r, bare_zero = m[6] or 0, true")
QUICK["has"] = _quick("has", "ARGV[4]", "local r, bare_zero = m[6] and 1 or 0, false")
# limit, field, value: HSET first; only a new field costs the count of keys (and is taken
# back if it went past the limit).
QUICK["set"] = _quick(
    "set",
    "ARGV[5]",
    r"""local r, bare_zero = 1, false
if redis.call('HSET', k, ARGV[5], ARGV[6]) == 1 then
  local lim = tonumber(ARGV[4])
  if redis.call('HLEN', k) > lim and users(k) > lim then
    redis.call('HDEL', k, ARGV[5])
    return {err = 'HASHSESSION_LIMIT ' .. ARGV[5]}
  end
end""",
    _USERS,
)
# limit, field, amount
QUICK["incr"] = _quick(
    "incr",
    "ARGV[5]",
    r"""local bare_zero = false
if not m[6] then
  local full = over(k, redis.call('HLEN', k), tonumber(ARGV[4]), {ARGV[5]})
  if full then return full end
end
local r = redis.call('HINCRBY', k, ARGV[5], ARGV[6])""",
    _USERS + _OVER,
)
# field -> 0 (not there), 1 (deleted), {1} (deleted, and the emptied session with it)
QUICK["delete"] = _quick(
    "delete",
    "ARGV[4]",
    r"""local r, bare_zero = 0, false
if m[6] then
  redis.call('HDEL', k, ARGV[4])
  r = 1
  if bare(k) then
    redis.call('DEL', k)
    return {{1}}
  end
end""",
    _BARE,
)

#: The first write of a request on a plain session this process slid lately, so that no
#: slide is due (``PLAIN[op]`` for ``set`` of one field, ``incr`` by an int, ``delete``):
#: the live script's change, after one ``HMGET`` checking the session is still plain
#: (created-at present, no timeout or cookie lifetime of its own). Arguments as the live
#: script's. The reply is the live script's, or false when the session is gone or no
#: longer plain (then the quick script runs, and slides).
PLAIN: dict[str, Script] = {}


def _plain(name: str, field: str, body: str, helpers: str) -> Script:
    return _script(
        f"plain_{name}",
        helpers
        + r"""
local k = KEYS[1]
local m = redis.call('HMGET', k, '\0c', '\0t', '\0k', """
        + field
        + r""")
if not m[1] or m[2] or m[3] then return false end
"""
        + body,
    )


# limit, field, value
PLAIN["set"] = _plain(
    "set",
    "ARGV[2]",
    r"""redis.call('HSET', k, ARGV[2], ARGV[3])
if not m[4] then
  local lim = tonumber(ARGV[1])
  if redis.call('HLEN', k) > lim and users(k) > lim then
    redis.call('HDEL', k, ARGV[2])
    return {err = 'HASHSESSION_LIMIT ' .. ARGV[2]}
  end
end
return 1
""",
    _USERS,
)
# limit, field, amount
PLAIN["incr"] = _plain(
    "incr",
    "ARGV[2]",
    r"""if not m[4] then
  local full = over(k, redis.call('HLEN', k), tonumber(ARGV[1]), {ARGV[2]})
  if full then return full end
end
return redis.call('HINCRBY', k, ARGV[2], ARGV[3])
""",
    _USERS + _OVER,
)
# field -> 0 (not there), 1 (deleted), {1} (deleted, and the emptied session with it)
PLAIN["delete"] = _plain(
    "delete",
    "ARGV[1]",
    r"""if not m[4] then return 0 end
redis.call('HDEL', k, ARGV[1])
if bare(k) then
  redis.call('DEL', k)
  return {1}
end
return 1
""",
    _BARE,
)

#: The first read of a request served by the near cache (``get`` or ``has`` of one field):
#: idle ms, now ms, absolute ms, refresh share in thousandths, op name, field. It slides
#: the TTL only when at least 7/8 of that share of the idle timeout has passed since the
#: last slide (told by the TTL left), so a TTL refresh costs one round trip per share. Answers
#: false when the session is gone, else ``{r, owner or nil, good, lifetime or nil, due,
#: own}``: due is how many ms from now the session may be served without asking (no slide
#: due, and never past its expiry); own is 1 if the session has an idle timeout of its own.
OPEN_NEAR = _script(
    "open_near",
    _STATE
    + _SLIDE
    + r"""
local k = KEYS[1]
local idle, now, abs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local left = redis.call('PTTL', k)
if left == -2 then return false end
local m = redis.call('HMGET', k, '\0c', '\0t', '\0k')
local own = idle
if m[2] then own = tonumber(m[2]) end
local target, ended = own, false
if abs > 0 and m[1] then
  local rest = tonumber(m[1]) + abs - now
  if rest <= 0 then ended = true elseif rest < target then target = rest end
end
local cut = math.floor(own * tonumber(ARGV[4]) / 1000)
-- (slack: an eighth of the share, so a client whose clock runs a little ahead of the
-- server's still finds the slide due, instead of coming back for it a moment later)
if ended or left < 0 or left <= target - cut + math.floor(cut / 8) then
  left = slide(k, idle, now, abs)
  if not left then return false end
  if owner and redis.call('EXISTS', k) == 1 then redis.call('HSET', k, '\0i', good) end
else
  keep = m[3]
end
local r = redis.call(ARGV[5] == 'get' and 'HGET' or 'HEXISTS', k, ARGV[6])
local due = left - target + cut
if due > left then due = left end
return {r, owner, good, keep, due, m[2] and 1 or 0}
""",
)

#: A brand-new session: ttl ms, then field/value pairs (metadata included). 1, or 0 if taken.
CREATE = _script(
    "create",
    r"""
local k = KEYS[1]
if redis.call('EXISTS', k) == 1 then return 0 end
redis.call('HSET', k, unpack(ARGV, 2))
redis.call('PEXPIRE', k, ARGV[1])
return 1
""",
)

#: Log a session in, off a Cluster: KEYS are its key, its new key and the user's index;
#: idle ms, now ms, absolute ms, the owner field value (see ``OWNER_FIELD``), the user's
#: cap (0: none). Slides, puts the new key in the index (dropping the old key's entry if
#: the session had this owner already; deleting and unindexing the sessions beyond the
#: cap), renames, and records the owner, the visit and the index entry's good-until, all
#: in one atomic step. False if the session is gone, 0 if the new key exists, else
#: {1, the previous owner or nil, good-until}.
LOGIN = _script(
    "login",
    _HELPERS
    + _INDEX_LIB
    + r"""
local k, n, x, now = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[2])
if not slide(k, tonumber(ARGV[1]), now, tonumber(ARGV[3])) then return false end
if redis.call('EXISTS', n) == 1 then return 0 end
local before = redis.call('HGET', k, '\0u')
local gone = {}
if before == ARGV[4] then gone[1] = k end
put(x, now, tonumber(ARGV[5]), '', gone, {}, {fresh, n}, true)
redis.call('RENAME', k, n)
redis.call('HSET', n, '\0u', ARGV[4], '\0s', ARGV[2], '\0i', fresh)
expire(x, now)
return {1, before, fresh}
""",
)

#: Log a new session in, off a Cluster: KEYS are its key and the user's index; ttl ms,
#: now ms, the user's cap (0: none), the index entry's good-until, then the field/value
#: pairs to create it with (the owner's metadata among them). Indexes it (deleting and
#: unindexing the sessions beyond the cap) and creates it in one atomic step. 1, or 0 if
#: the key exists.
LOGIN_NEW = _script(
    "login_new",
    _INDEX_LIB
    + r"""
local n, x, now = KEYS[1], KEYS[2], ARGV[2]
if redis.call('EXISTS', n) == 1 then return 0 end
put(x, now, tonumber(ARGV[3]), '', {}, {}, {ARGV[4], n}, true)
redis.call('HSET', n, unpack(ARGV, 5))
redis.call('PEXPIRE', n, ARGV[1])
expire(x, now)
return 1
""",
)

#: Log a session in on a Cluster, where its user's index lives in another slot: the
#: client has put the new key in the index already (``INDEX`` put, first, with the login's
#: marker, which keeps that entry from being pruned before this runs), so the session
#: is never owned without being indexed. KEYS are its key and its new key (same slot);
#: idle ms, now ms, absolute ms, the owner field value (see ``OWNER_FIELD``), and that
#: entry's good-until. Slides, renames and records the owner, the visit and the index
#: entry's good-until. A session whose own idle timeout would outlast the entry is capped
#: to it (its next request's refresh moves both along). False if the session is gone, 0
#: if the new key exists, else {1, the previous owner or nil, good-until}.
LOGIN_APART = _script(
    "login_apart",
    _HELPERS
    + r"""
local k, n, now, indexed = KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[5])
local ttl = slide(k, tonumber(ARGV[1]), now, tonumber(ARGV[3]))
if not ttl then return false end
local before = redis.call('HGET', k, '\0u')
if redis.call('RENAMENX', k, n) == 0 then return 0 end
if fresh > indexed then
  fresh = indexed
  if now + ttl > indexed then redis.call('PEXPIRE', n, math.max(1, indexed - now)) end
end
redis.call('HSET', n, '\0u', ARGV[4], '\0s', ARGV[2], '\0i', fresh)
return {1, before, fresh}
""",
)

#: Delete a session and say whose it was: KEYS[1] is its key; ARGV the owner field values
#: it may have (the keyed one, the legacy one), none for any owner. False if it is gone,
#: 0 if someone else owns it, else {1, owner or nil}.
REVOKE = _script(
    "revoke",
    r"""
local k = KEYS[1]
local m = redis.call('HMGET', k, '\0u', '\0c')
if not m[2] and redis.call('EXISTS', k) == 0 then return false end
if #ARGV > 0 then
  local mine = false
  for _, v in ipairs(ARGV) do
    if m[1] == v then mine = true end
  end
  if not mine then return 0 end
end
redis.call('DEL', k)
return {1, m[1]}
""",
)

#: The prefix of a marker in a user's index (see :data:`INDEX`).
MARKER = "\x00p"

#: One user's index (KEYS[1]): a sorted set of session keys scored by the time (ms) until
#: which each entry is known to outlast its session, and, on a Cluster, the markers of
#: logins in progress: ``MARKER + new key + "\x00" + old key`` (the old key empty for a
#: new session), scored by the time until which that login may still make its session.
#: A login there puts its new key and its marker in first, then makes the session in
#: another slot. While the marker lives, the new key's entry stays even when its session
#: is found missing (``dead``), and drop and find also name the old key (in the new key's
#: slot): deleting it, the caller makes the rename find the session gone, so the login
#: cannot bring it in after a logout (it starts a new, empty session under the entry
#: that stayed). A marker itself is never answered (listed, dropped, found or evicted) and never
#: counts against a cap; it goes when its score passes or with its new key's entry (when
#: that is pruned, or removed as gone for good). ARGV: now ms,
#: then one of
#:   put, cap (0: none), a member that does not count against the cap or '' (the old key
#:     of the session logging in), n, n members to remove (their sessions are gone or
#:     moved: their markers go too), d, d members to remove unless a live marker names
#:     them (their sessions were found missing), then score/member pairs to add
#:     -> the members to evict to honour the cap (never one just added, never the spared
#:     one); they stay indexed until the caller, having deleted their sessions, removes them;
#:   list -> every member;
#:   drop, a member to keep or '', the SHA1 of a member to keep or '' -> the others, and
#:     the new and old keys of every login in progress but the kept session's;
#:   find, the SHA1 of a member -> that member and the new keys of logins in progress
#:     from it, or false.
#: Only put removes members: drop and find leave them for the caller to remove once their
#: sessions are deleted, so a delete that fails leaves them indexed and a retry finds them.
#: Entries scored below now are pruned, and the key expires with its last entry.
INDEX = _script(
    "index",
    _INDEX_LIB
    + r"""
local k, now, what = KEYS[1], ARGV[1], ARGV[2]
local out = false
if what == 'put' then
  local n = tonumber(ARGV[5])
  local d = tonumber(ARGV[6 + n])
  local ended, dead, adds = {}, {}, {}
  for j = 6, 5 + n do ended[#ended + 1] = ARGV[j] end
  for j = 7 + n, 6 + n + d do dead[#dead + 1] = ARGV[j] end
  for j = 7 + n + d, #ARGV do adds[#adds + 1] = ARGV[j] end
  out = put(k, now, tonumber(ARGV[3]), ARGV[4], ended, dead, adds, false)
elseif what == 'list' then
  prune(k, now)
  out = {}
  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    if not marker(m) then out[#out + 1] = m end
  end
elseif what == 'drop' then
  local marks, order = pending(k, now)
  local function kept(m)
    return m == ARGV[3] or (ARGV[4] ~= '' and redis.sha1hex(m) == ARGV[4])
  end
  -- The kept session, and the one it is becoming if it is logging in.
  local function spared(m)
    if kept(m) then return true end
    local from = marks[m] and marks[m][2] or ''
    return from ~= '' and kept(from)
  end
  local seen = {}
  out = {}
  local function doom(m)
    if not seen[m] then
      seen[m] = true
      out[#out + 1] = m
    end
  end
  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    if not marker(m) and not spared(m) then doom(m) end
  end
  for _, m in ipairs(order) do
    if not spared(m) then
      doom(m)
      if marks[m][2] ~= '' then doom(marks[m][2]) end
    end
  end
elseif what == 'find' then
  for _, m in ipairs(redis.call('ZRANGE', k, 0, -1)) do
    if not marker(m) and redis.sha1hex(m) == ARGV[3] then
      out = {m}
      break
    end
  end
  if out then
    local marks, order = pending(k, now)
    for _, m in ipairs(order) do
      if marks[m][2] == out[1] then out[#out + 1] = m end
    end
  end
else
  return redis.error_reply('unknown index operation ' .. tostring(what))
end
expire(k, now)
return out
""",
)

#: Every script (to load them all ahead, say).
EVERY: tuple[Script, ...] = (
    *LIVE.values(),
    OPEN,
    *QUICK.values(),
    *PLAIN.values(),
    OPEN_NEAR,
    CREATE,
    LOGIN,
    LOGIN_NEW,
    LOGIN_APART,
    REVOKE,
    INDEX,
)
_BY_SHA = {s.sha: s for s in EVERY}


def with_source(cmd: Sequence[Any]) -> tuple[Any, ...]:
    """``cmd`` as it must be resent after ``NOSCRIPT``: an ``EVALSHA`` becomes ``EVAL``."""
    if cmd[0] != "EVALSHA":
        return tuple(cmd)
    return ("EVAL", _BY_SHA[cmd[1]].source, *cmd[2:])
