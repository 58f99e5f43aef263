"""The Lua scripts behind every write: check that the session lives, then change it.

Each write runs as one script so that the liveness check and the change are
atomic: a write racing ``invalidate()`` or expiry finds the key gone and
reports it, instead of re-creating a key without a TTL. Every script touches
only ``KEYS`` (one key, or two keys in one slot for ``regenerate``), so all of
them are Redis Cluster safe.

The first command of a request runs through ``OPEN``: it slides the idle
timeout (honouring a per-session timeout and the absolute deadline) and then
performs the request's first operation, all in one round trip.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

__all__ = ["CREATE", "LIMIT_ERROR", "LIVE", "OPEN", "Script", "by_sha"]

LIMIT_ERROR = "HASHSESSION_LIMIT"
CREATED_FIELD = "\x00c"
TTL_FIELD = "\x00t"

# Shared helpers. Reserved fields start with a NUL byte; user fields never do.
_HELPERS = r"""
local function users(k)
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.byte(f, 1) ~= 0 then n = n + 1 end
  end
  return n
end
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
end
local function slide(k, idle, now, abs)
  local m = redis.call('HMGET', k, '\0c', '\0t')
  if not m[1] and redis.call('EXISTS', k) == 0 then return false end
  if m[2] then idle = tonumber(m[2]) end
  if abs > 0 and m[1] then
    local left = tonumber(m[1]) + abs - now
    if left <= 0 then
      redis.call('DEL', k)
      return false
    end
    if left < idle then idle = left end
  end
  redis.call('PEXPIRE', k, idle)
  return idle
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
    "incr_float": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local full = over(k, n, tonumber(ARGV[a]), {ARGV[a + 1]})
  if full then return full end
  return redis.call('HINCRBYFLOAT', k, ARGV[a + 1], ARGV[a + 2])
end""",
    # limit, field, value -> the value now stored
    "setdefault": r"""function(k, a)
  local n = redis.call('HLEN', k)
  if n == 0 then return false end
  local full = over(k, n, tonumber(ARGV[a]), {ARGV[a + 1]})
  if full then return full end
  redis.call('HSETNX', k, ARGV[a + 1], ARGV[a + 2])
  return redis.call('HGET', k, ARGV[a + 1])
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
    # field -> the value it had, or false
    "pop": r"""function(k, a)
  local v = redis.call('HGET', k, ARGV[a])
  if v then redis.call('HDEL', k, ARGV[a]) end
  return v
end""",
    "len": r"""function(k, a)
  return users(k)
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
    "touch": r"""function(k, a)
  if redis.call('EXISTS', k) == 0 then return false end
  if ARGV[a] ~= '' then redis.call('HSET', k, '\0t', ARGV[a]) end
  return slide(k, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]))
end""",
    # KEYS[2] is the new key, in the same slot
    "rename": r"""function(k, a)
  if redis.call('EXISTS', k) == 0 then return false end
  return redis.call('RENAMENX', k, KEYS[2])
end""",
    # reads, needed only as the first command of a request
    "get": r"""function(k, a) return redis.call('HGET', k, ARGV[a]) end""",
    "has": r"""function(k, a) return redis.call('HEXISTS', k, ARGV[a]) end""",
    "delete": r"""function(k, a) return redis.call('HDEL', k, ARGV[a]) end""",
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


def _live(name: str) -> Script:
    return _script(name, f"{_HELPERS}\nlocal op = {_OPS[name]}\nreturn op(KEYS[1], 1)\n")


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
        "len",
        "clear",
        "cas",
        "touch",
    )
}
LIVE["rename"] = _live("rename")

#: The first command of a request: idle ms, now ms, absolute ms, op name, op args.
#: Answers false when the session is gone, else a one-element array with the op's reply.
OPEN = _script(
    "open",
    _HELPERS
    + "local ops = {\n"
    + ",\n".join(f"  [{name!r}] = {body}" for name, body in _OPS.items())
    + "\n}\n"
    + r"""
local k = KEYS[1]
if not slide(k, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then return false end
local r = ops[ARGV[4]](k, 5)
if type(r) == 'table' and r.err then return r end
return {r}
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

_BY_SHA = {s.sha: s for s in (*LIVE.values(), OPEN, CREATE)}


def by_sha(sha: str) -> Script:
    """The script a SHA names, to resend its source after ``NOSCRIPT``."""
    return _BY_SHA[sha]
