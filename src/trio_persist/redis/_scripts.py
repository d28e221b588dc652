"""The Redis backend's keys and Lua scripts: every state change is one atomic script.

Keys of one request share a Redis Cluster hash slot (the ``{namespace:key}``
hash tag), so each script touches one slot:

* ``{ns:key}:lease``: ``"<id>:<token>"``, with a TTL. The id (128 random bits,
  new for every acquire) is the leader's identity; every equality check
  (renew, commit, release) compares the whole value.
* ``{ns:key}:fence``: the last ordering token issued for the key.
* ``{ns:key}:result``: the last committed outcome.
* ``{ns:key}:linger``: ``"<us>:<payload>"``, a success that lingers for late
  callers, with the server's clock at its commit: a caller takes it only while
  its own linger covers its age; anything else found there is ignored.
* ``{ns:key}:waiting``: set when a process follows the current leader; a commit
  or abandonment is published only then (and clears it), so uncontended keys
  cost no publication and no process hears news nobody waits for.
* channel ``{ns:key}:done``: where commits and abandonments are announced.

**Tokens** order leaders of one key and never repeat, even after Redis lost
its data: a token is the server's clock in microseconds, or one more than the
last token issued for the key if that is larger. A restart that forgets the
fence key resumes from the clock, above every token issued before (assuming
the server's clock, or the promoted replica's, does not step back by more than
the restart took).

Payloads are ``b"<token>:<mac>:<json>"`` (see `trio_persist._codec`): the
scripts read the token without decoding the rest.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["ACQUIRE", "COMMIT", "LUA_HELPERS", "PEEK", "RELEASE", "RENEW", "Keys", "pattern_of"]

# Shared by the scripts. Tokens are handled as decimal strings of at most 16
# digits, never as Lua numbers (doubles, exact only below 2**53): ordering and
# "one more" stay exact for every token a payload can carry.
_HELPERS = """
local function digits(value)
  if not value then return nil end
  local d = string.match(value, '^0*(%d+)$')
  if d == nil or #d > 16 then return nil end
  return d
end
local function before(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function increment(d)
  local i = #d
  while i > 0 and string.sub(d, i, i) == '9' do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #d) end
  return string.sub(d, 1, i - 1) .. string.char(string.byte(d, i) + 1) .. string.rep('0', #d - i)
end
local function now_us()
  local now = redis.call('TIME')
  return digits(now[1] .. string.format('%06d', tonumber(now[2])))
end
local function lease_token(value)
  if not value then return nil end
  local id, token = string.match(value, '^(%x+):(%d+)$')
  if id == nil or #id ~= 32 then return nil end
  return digits(token)
end
local function payload_token(value)
  if not value then return nil end
  return digits(string.match(value, '^(%d+):'))
end
local function get(key)
  local ok, value = pcall(redis.call, 'GET', key)
  if not ok then return redis.error_reply('WRONGTYPE ' .. key) end
  return value
end
local function live(key, value, ttl_ms)
  -- A lease a follower may wait for: well formed, and expiring within a TTL of
  -- ours (an immortal lease, or one set for longer, is foreign: replaced).
  if not lease_token(value) then return false end
  local left = redis.call('PTTL', key)
  return left > 0 and left <= tonumber(ttl_ms)
end
"""

LUA_HELPERS = _HELPERS
"""The helpers every token-handling script starts with (worker leases use them too)."""

# KEYS: lease, fence, linger, result, waiting[, the group's worker lease]. ARGV:
# ttl_ms, the caller's linger in ms ("0": none), the token of a leader seen to
# vanish ("0" if none), the new lease id, fence_ttl_ms[, ":<node>" of the caller].
# Returns {"w", value}: the group's worker lives in another process (its lease's
# value: the request goes there, nothing is taken here); {"g", payload}: a
# success committed less than the caller's linger ago (on the server's clock);
# {"r", payload}: on a takeover, a result committed at or after the vanished
# token; {"f", token}: follow the live leader; {"l", token, repaired}: we lead
# ("repaired" is 1 when a foreign lease was replaced).
# Idempotent: a retried acquire that finds its own id leads with its token.
ACQUIRE = (
    _HELPERS
    + """
if KEYS[6] then
  local owner = get(KEYS[6])
  if type(owner) == 'table' then return owner end
  if owner and string.sub(owner, -#ARGV[6]) ~= ARGV[6] then return {'w', owner} end
end
if ARGV[2] ~= '0' then
  local lingering = get(KEYS[3])
  if type(lingering) == 'table' then return lingering end
  local at, payload = nil, nil
  if lingering then at, payload = string.match(lingering, '^(%d+):(.*)$') end
  local token = payload_token(payload)
  at = digits(at)
  if at and token and not before(at, token) then
    local now = now_us()
    if not before(now, at) and tonumber(now) - tonumber(at) <= tonumber(ARGV[2]) * 1000 then
      return {'g', payload}
    end
  end
end
if ARGV[3] ~= '0' then
  local committed = get(KEYS[4])
  if type(committed) == 'table' then return committed end
  local token = payload_token(committed)
  if token and not before(token, ARGV[3]) then return {'r', committed} end
end
local current = get(KEYS[1])
if type(current) == 'table' then return current end
local repaired = 0
if current then
  local token = lease_token(current)
  if token and string.sub(current, 1, 32) == ARGV[4] then return {'l', token, 0} end
  if live(KEYS[1], current, ARGV[1]) then
    redis.call('SET', KEYS[5], '1', 'PX', ARGV[5])
    return {'f', token}
  end
  repaired = 1  -- foreign, malformed or immortal: never followed, replaced
end
local fence = get(KEYS[2])
if type(fence) == 'table' then return fence end
local token = now_us()
local last = digits(fence)
-- One more than the last token, unless that is behind the clock (sixteen nines
-- cannot grow within sixteen digits: a foreign fence, ignored).
if last and not before(last, token) and last ~= '9999999999999999' then
  token = increment(last)
end
redis.call('SET', KEYS[2], token, 'PX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[4] .. ':' .. token, 'PX', ARGV[1])
return {'l', token, repaired}
"""
)

# KEYS: lease. ARGV: lease value, ttl_ms. 1 if still ours (renewed), else 0.
RENEW = """
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if ok and value == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lease, result, linger, fence, waiting. ARGV: lease value, token, channel,
# result_ttl_ms, "1" for sharded publication, linger_ms (0: none), payload (the
# last two last: all the others are known before the device runs, and sent
# packed then).
# Commits when the lease is ours, or gone with no newer token issued since
# (it expired and nobody took over). A lingering success is stored with the
# server's clock at the commit ("<us>:<payload>"): its window is measured from
# there. Returns {"c"} (committed), else {"r", payload} (the newest result, for
# the refused leader to answer with), {"f", token} (follow the leader that took
# over) or {"x"} (nothing to follow).
# Idempotent: a retried commit finds no lease and its own token as the fence.
COMMIT = (
    _HELPERS
    + """
local current = get(KEYS[1])
if type(current) == 'table' then return current end
local token = ARGV[2]
if current ~= ARGV[1] then
  local fence = get(KEYS[4])
  if type(fence) == 'table' then return fence end
  local last = digits(fence)
  if current or (last and before(token, last)) then
    local result = get(KEYS[2])
    if type(result) == 'table' then return result end
    local committed = payload_token(result)
    if committed and before(token, committed) then return {'r', result} end
    local leader = lease_token(current)
    if leader then return {'f', leader} end
    return {'x'}
  end
end
local payload = ARGV[7]
redis.call('SET', KEYS[2], payload, 'PX', ARGV[4])
if ARGV[6] ~= '0' then redis.call('SET', KEYS[3], now_us() .. ':' .. payload, 'PX', ARGV[6]) end
if redis.call('DEL', KEYS[5]) == 1 then  -- someone follows: tell them
  if ARGV[5] == '1' then
    redis.call('SPUBLISH', ARGV[3], payload)
  else
    redis.call('PUBLISH', ARGV[3], payload)
  end
end
if current then redis.call('DEL', KEYS[1]) end
return {'c'}
"""
)

# KEYS: lease, waiting. ARGV: lease value, channel, abandonment message, "1" sharded.
# Drops the lease if still ours and says so on the channel (followers take over
# at once). 1 if dropped.
RELEASE = """
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if not ok or value ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 then
  if ARGV[4] == '1' then
    redis.call('SPUBLISH', ARGV[2], ARGV[3])
  else
    redis.call('PUBLISH', ARGV[2], ARGV[3])
  end
end
return 1
"""

# KEYS: lease, result. ARGV: ttl_ms. What a follower checks when it has heard
# nothing: {lease token or "", result or ""}. A lease it may not wait for (see
# `live`) reads as "bad".
PEEK = (
    _HELPERS
    + """
local lease = get(KEYS[1])
if type(lease) == 'table' then return lease end
local result = get(KEYS[2])
if type(result) == 'table' then return result end
local token = ''
if lease then
  if live(KEYS[1], lease, ARGV[1]) then token = lease_token(lease) else token = 'bad' end
end
return {token, result or ''}
"""
)


@attrs.frozen
class Keys:
    """The names of one request's keys and channel (all in one hash slot)."""

    lease: str
    fence: str
    linger: str
    result: str
    waiting: str
    channel: str

    @classmethod
    def of(cls, namespace: str, key: str) -> Keys:
        tag = "{" + namespace + ":" + key + "}"
        return cls(
            lease=tag + ":lease",
            fence=tag + ":fence",
            linger=tag + ":linger",
            result=tag + ":result",
            waiting=tag + ":waiting",
            channel=tag + ":done",
        )


_GLOB_SPECIAL = "\\*?[]^"


def pattern_of(namespace: str) -> str:
    """The PSUBSCRIBE pattern matching every channel of *namespace*."""
    escaped = "".join("\\" + c if c in _GLOB_SPECIAL else c for c in namespace)
    return "{" + escaped + ":*}:done"


def key_of_channel(namespace: str, channel: Any) -> str | None:
    """The request key a channel name belongs to, or None if it is not ours."""
    if isinstance(channel, bytes):
        channel = channel.decode("utf-8", "replace")
    prefix, suffix = "{" + namespace + ":", "}:done"
    if not isinstance(channel, str) or not channel.startswith(prefix):
        return None
    if not channel.endswith(suffix) or len(channel) < len(prefix) + len(suffix):
        return None
    return channel[len(prefix) : -len(suffix)]
