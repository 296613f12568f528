"""Lua scripts for the atomic steps of events and tracked runs, and the codes they answer."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

# Every multi-key step is one script, and all of its keys share one hash slot (keys.py). The
# delivery queue's scripts are in queue_scripts.py.


class Reply(IntEnum):
    """The code that accept(), settle() and CALLBACK_PENDING answer beside a value."""

    DUPLICATE = 0
    """The event, or its run's terminal event, exists already; the value is that event's id."""
    STORED = 1
    """Stored with its deliveries queued (CALLBACK_PENDING: kept for the poller); the value is
    the event id."""
    STALE = 2
    """The subscriptions changed since the caller's cache was read: match again; the value is
    the current subscriptions version."""
    LEASE_LOST = 3
    """Another worker holds the run now, or it was untracked: the poll is dropped."""
    FINISHED = 4
    """The run had finished meanwhile: nothing was recorded."""
    NO_EVENT = 5
    """The poll was recorded and the run rescheduled; no event came with it."""


# Replies by code: indexing a tuple is a fifth of the cost of Reply(code) on the ingest path.
REPLIES = tuple(Reply)

# Shared Lua functions, prepended to the scripts that use them.
_FINISH_RUN = """
-- End a tracked run: no more polls. It stays readable for the retention, then expires.
local function finish_run(hkey, due, member, now, ttl, status)
  if redis.call('EXISTS', hkey) == 0 then return end
  redis.call('HSET', hkey, 'st', 'finished', 'fin', now, 'np', '')
  if status and status ~= '' then redis.call('HSET', hkey, 's', status) end
  redis.call('HDEL', hkey, 'lk')
  redis.call('EXPIRE', hkey, ttl)
  redis.call('ZREM', due, member)
end
"""

_SLOTS = """
-- A provider's deployment-wide request budget (GCRA): slots are `spacing` ms apart, and only
-- slots before now + horizon are handed out, so no worker hoards the budget. spacing 0 means
-- no limit. free_slots() says how many of `want` could be taken (and from when) without taking
-- them; take_slots() takes `n` from `first` on, so a later call continues from the last one.
local function free_slots(bucket, now, spacing, horizon, want)
  if spacing <= 0 then return now, want end
  local tat = tonumber(redis.call('GET', bucket) or '0')
  if tat < now then tat = now end
  if tat > now + horizon then return tat, 0 end
  return tat, math.min(want, math.floor((now + horizon - tat) / spacing) + 1)
end

local function take_slots(bucket, now, spacing, first, n)
  if spacing > 0 and n > 0 then
    local last = first + n * spacing
    redis.call('SET', bucket, string.format('%.3f', last), 'PX', math.ceil(last - now) + 1000)
  end
end
"""

_ACCEPT_FN = _FINISH_RUN + """
-- Store an event and queue its deliveries in one atomic step, or report why not.
-- S: what every event of one script call shares: {events index, subscriptions version, queue,
--    deliveries index, ts ms, retention s}.
-- The event itself is read from K at offset k and from A at offset a, laid out as
-- store/events.py's pack_event() writes it:
--   K: dedupe, event, run index, event's delivery list, tracked-run hash, provider's poll
--      schedule, then (delivery, subscription's delivery index) per delivery;
--   A: delivery count n, event id, body, type, provider, subject, expected version ('*' skips
--      the check), dedupe mode, ends-run flag, run status, schedule member, then
--      (delivery id, subscription id) per delivery.
-- Offsets rather than copied tables: a batch's events are read in place from KEYS and ARGV.
-- Dedupe mode '1' refuses a second event under the dedupe key and sets it; 'g' only refuses
-- (run.updated and run.expired must not follow a terminal event); '0' does neither.
-- An event that ends its run (terminal, expired) also finishes the tracked run, if any, in this
-- same step: that is what stops polling the moment a callback reports the end.
-- Returns (codes as in Reply) {0, existing id} for a duplicate, {2, version} when the caller's
-- subscription cache is stale (so no delivery is created for a subscription it has not seen),
-- {1, id} when stored.
local function accept(S, K, k, A, a)
  local id, subject, mode, ts, ttl = A[a + 1], A[a + 5], A[a + 7], S[5], S[6]
  if mode ~= '0' then
    local existing = redis.call('GET', K[k])
    if existing then return {0, existing} end
  end
  if A[a + 6] ~= '*' then
    local ver = redis.call('GET', S[2]) or '0'
    if ver ~= A[a + 6] then return {2, ver} end
  end
  if mode == '1' then redis.call('SET', K[k], id, 'EX', ttl) end
  redis.call('HSET', K[k + 1], 'body', A[a + 2], 'type', A[a + 3], 'provider', A[a + 4],
    'subject', subject, 'ts', ts)
  redis.call('EXPIRE', K[k + 1], ttl)
  redis.call('ZADD', S[1], ts, id)
  redis.call('ZADD', K[k + 2], ts, id)
  redis.call('EXPIRE', K[k + 2], ttl)
  local n = tonumber(A[a])
  for i = 1, n do
    local dkey, sidx = K[k + 4 + 2 * i], K[k + 5 + 2 * i]
    local did, sid = A[a + 9 + 2 * i], A[a + 10 + 2 * i]
    redis.call('HSET', dkey, 'ev', id, 'sub', sid, 'run', subject, 'st', 'pending', 'n', 0,
      'base', 0, 'g', 0, 'ts', ts, 'up', ts)
    redis.call('EXPIRE', dkey, ttl)
    redis.call('ZADD', S[4], ts, did)
    redis.call('ZADD', sidx, ts, did)
    redis.call('RPUSH', K[k + 3], did)
    redis.call('XADD', S[3], '*', 'd', did, 'e', id, 'g', 0)
  end
  if n > 0 then redis.call('EXPIRE', K[k + 3], ttl) end
  if A[a + 8] == '1' then finish_run(K[k + 4], K[k + 5], A[a + 10], ts, ttl, A[a + 9]) end
  return {1, id}
end
"""

# Many accept() calls in one script: the group commit of concurrent callbacks (batching.py).
# What every event shares goes once, so an event packs 17 values (and 4 per delivery), not 22.
ACCEPT_MANY = _ACCEPT_FN + """
-- KEYS: events index, subscriptions version, queue, deliveries index, then each event's keys.
-- ARGV: ts ms, retention s, then each event's args (both in accept()'s layout).
-- Returns code and value per event, flattened.
local S = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]}
local out, k, a = {}, 5, 3
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local r = accept(S, KEYS, k, ARGV, a)
  out[#out + 1], out[#out + 2] = r[1], r[2]
  k, a = k + 6 + 2 * n, a + 11 + 2 * n
end
return out
"""

TRACK = """
-- Start tracking a run, or leave the existing one as it is (idempotent).
-- KEYS: run hash, runs index, provider's poll schedule, the run's terminal dedupe key, wake list
-- ARGV: member, now ms, first poll ms, retention s, then the run's field/value pairs.
-- A run whose terminal event already came (by callback) is stored finished: nothing to poll.
-- Returns 1 when created, 0 when it already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[1], 'st', 'finished', 'fin', ARGV[2], 'np', '')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  -- Wake one sleeping poller; the list is only a doorbell, so a few entries are plenty.
  redis.call('RPUSH', KEYS[5], ARGV[3])
  redis.call('LTRIM', KEYS[5], -8, -1)
end
return 1
"""

CLAIM = _SLOTS + """
-- Lease a provider's due runs to one worker, each with a request slot from the shared budget.
-- KEYS: provider's poll schedule, provider's rate bucket
-- ARGV: now ms, max runs, slot spacing ms (0: no limit), horizon ms, lease ms, worker token,
--       tracked-run key prefix (same hash tag as KEYS, so the same slot on a cluster)
-- A run is leased by moving its schedule score to now + lease: no other worker sees it due
-- until then, which is also how a dead worker's runs are taken over. Only as many due runs are
-- read as the budget has slots for, and a slot is taken only for a run that still exists.
-- Returns {score of the next scheduled run or false, next free slot ms, {slot ms, fields}...}.
local now, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local spacing, lease_until = tonumber(ARGV[3]), now + tonumber(ARGV[5])
local first, can = free_slots(KEYS[2], now, spacing, tonumber(ARGV[4]), want)
local out, leased = {}, {}
if can > 0 then
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, can)) do
    local hkey = ARGV[7] .. m
    local h = redis.call('HGETALL', hkey)
    if #h == 0 then
      redis.call('ZREM', KEYS[1], m)  -- untracked meanwhile
    else
      redis.call('HSET', hkey, 'lk', ARGV[6])
      local i = #out + 1
      out[i] = {string.format('%.3f', first + (i - 1) * math.max(spacing, 0)), h}
      leased[#leased + 1] = lease_until
      leased[#leased + 1] = m
    end
  end
end
local n = #out
take_slots(KEYS[2], now, spacing, first, n)
if n > 0 then redis.call('ZADD', KEYS[1], unpack(leased)) end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local free = first + n * math.max(spacing, 0)
return {head[2] or false, string.format('%.3f', free), out}
"""

RESERVE = _SLOTS + """
-- One request slot outside the schedule (a FLORA callback fetching its run at once).
-- KEYS: provider's rate bucket. ARGV: now ms, spacing ms, horizon ms.
-- Returns {slot ms, 1} or {next free slot ms, 0} when none is free within the horizon.
local now, spacing = tonumber(ARGV[1]), tonumber(ARGV[2])
local first, n = free_slots(KEYS[1], now, spacing, tonumber(ARGV[3]), 1)
take_slots(KEYS[1], now, spacing, first, n)
return {string.format('%.3f', first), n}
"""

PAUSE = """
-- Push a provider's next free slot to at least ARGV[2] (a 429): every worker waits.
-- KEYS: provider's rate bucket. ARGV: now ms, resume ms.
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1000)
end
return 1
"""

_SETTLE_FN = _ACCEPT_FN + """
-- Record one poll of a run and schedule its next one, with its event (if any) in the same step.
-- K: run hash, provider's poll schedule, then, when an event comes with it, accept()'s shared
--    keys (events index, subscriptions version, queue, deliveries index) and the event's keys
-- A: worker token, member, next poll ms, now ms, retention s, field count f, f field/value
--    pairs, then the event's args (accept()'s layout)
-- Returns (codes as in Reply) {3} when the lease was lost (another worker owns the run now, or
-- it was untracked), {4} when the run had finished meanwhile, accept()'s answer when an event
-- came, else {5}.
local function settle(K, A)
  local hkey, due, member = K[1], K[2], A[2]
  local lease, st = unpack(redis.call('HMGET', hkey, 'lk', 'st'))
  if lease ~= A[1] then return {3, ''} end
  if st == 'finished' then
    redis.call('ZREM', due, member)
    return {4, ''}
  end
  local nf = tonumber(A[6])
  if #K == 2 then
    -- No event (most polls): the fields and the next poll, in one HSET.
    redis.call('HSET', hkey, 'np', A[3], unpack(A, 7, 6 + 2 * nf))
    redis.call('ZADD', due, A[3], member)
    return {5, ''}
  end
  local res = accept({K[3], K[4], K[5], K[6], A[4], A[5]}, K, 7, A, 7 + 2 * nf)
  if res[1] == 2 then return res end
  if nf > 0 then redis.call('HSET', hkey, unpack(A, 7, 6 + 2 * nf)) end
  if redis.call('HGET', hkey, 'st') == 'finished' then
    redis.call('HSET', hkey, 'np', '')
  elseif res[1] == 0 then
    -- The terminal event is already out (a callback won the race): this run is done.
    finish_run(hkey, due, member, A[4], A[5], nil)
  else
    redis.call('ZADD', due, A[3], member)
    redis.call('HSET', hkey, 'np', A[3])
  end
  return res
end
"""

SETTLE_MANY = _SETTLE_FN + """
-- Record many polls in one round trip, each exactly as settle() alone would, one after another.
-- KEYS: each poll's settle() keys in turn.
-- ARGV[1]: JSON [[key count, [settle() args, all strings]], ...], one entry per poll, in
--   order: one argument instead of a few dozen per poll, which the client packed one by one.
-- Returns settle()'s answer per poll, in order.
local out, ki = {}, 1
for p, item in ipairs(cjson.decode(ARGV[1])) do
  local K = {}
  for i = 1, item[1] do K[i] = KEYS[ki + i - 1] end
  out[p] = settle(K, item[2])
  ki = ki + item[1]
end
return out
"""

CALLBACK_PENDING = """
-- A FLORA callback whose run could not be fetched yet: keep the callback on the tracked run
-- (tracking it if needed) and poll it at once; the poller emits the terminal event under the
-- event id answered now.
-- KEYS: run hash, runs index, provider's poll schedule, terminal dedupe key, wake list
-- ARGV: member, now ms, event id, callback JSON, then field/value pairs for a new run
-- Returns {0, existing event id} when the terminal event or a pending one exists, else {1, id}.
local done = redis.call('GET', KEYS[4])
if done then return {0, done} end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local pending = redis.call('HGET', KEYS[1], 'pe')
  if pending then return {0, pending} end
  redis.call('PERSIST', KEYS[1])
  redis.call('HSET', KEYS[1], 'st', 'active', 'pn', 0)
else
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
redis.call('HSET', KEYS[1], 'pe', ARGV[3], 'pcb', ARGV[4], 'np', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[2])
redis.call('LTRIM', KEYS[5], -8, -1)
return {1, ARGV[3]}
"""

# Run the commands packed in ARGV (count, command, arguments..., count, ...) as one atomic step.
# MULTI/EXEC would do, but redis-py 8.1's cluster client binds a MULTI pipeline's connection
# to the wrong event loop; a script is atomic on a single Redis and a cluster alike. KEYS lists
# the keys the commands touch, so a cluster routes the script to their one slot.
EXEC_ALL = """
local out, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  out[#out + 1] = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return out
"""


class Atomic:
    """Commands collected to run as one Lua step (scripts.EXEC_ALL): MULTI/EXEC, cluster-safe."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[Any] = []

    def call(self, command: str, key: str, *args: Any) -> Atomic:
        if key not in self.keys:
            self.keys.append(key)
        self.args += [len(args) + 2, command, key, *args]
        return self


LEASE_RUN = """
-- Lease one tracked run to a worker outside the schedule, if it is still active: the sweep of
-- runs past RELAY_POLL_MAX_AGE that no poller ended. A poller's lease on it is taken over, and
-- the schedule holds the run back for the lease, so exactly one of them can settle it.
-- KEYS: run hash, provider's poll schedule. ARGV: worker token, member, lease until ms.
-- Returns the run's fields, or an empty list when it is gone or finished.
if redis.call('HGET', KEYS[1], 'st') ~= 'active' then return {} end
redis.call('HSET', KEYS[1], 'lk', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""
