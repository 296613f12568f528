"""Lua scripts for every multi-key step that must be atomic; all keys share one hash slot."""

from __future__ import annotations

from typing import Any

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
-- K: dedupe, event, events index, run index, subscriptions version, queue, deliveries index,
--    event's delivery list, tracked-run hash, provider's poll schedule, then
--    (delivery, subscription's delivery index) per delivery.
-- A: event id, body, type, provider, subject, ts ms, retention s, expected version ('*' skips
--    the check), dedupe mode, ends-run flag, run status, schedule member, then
--    (delivery id, subscription id) per delivery.
-- Dedupe mode '1' refuses a second event under the dedupe key and sets it; 'g' only refuses
-- (run.updated and run.expired must not follow a terminal event); '0' does neither.
-- An event that ends its run (terminal, expired) also finishes the tracked run, if any, in this
-- same step: that is what stops polling the moment a callback reports the end.
-- Returns {0, existing id} for a duplicate, {2, version} when the caller's subscription cache
-- is stale (so no delivery is created for a subscription it has not seen), {1, id} when stored.
local function accept(K, A)
  local mode, ttl = A[9], A[7]
  if mode ~= '0' then
    local existing = redis.call('GET', K[1])
    if existing then return {0, existing} end
  end
  if A[8] ~= '*' then
    local ver = redis.call('GET', K[5]) or '0'
    if ver ~= A[8] then return {2, ver} end
  end
  if mode == '1' then redis.call('SET', K[1], A[1], 'EX', ttl) end
  redis.call('HSET', K[2], 'body', A[2], 'type', A[3], 'provider', A[4], 'subject', A[5],
    'ts', A[6])
  redis.call('EXPIRE', K[2], ttl)
  redis.call('ZADD', K[3], A[6], A[1])
  redis.call('ZADD', K[4], A[6], A[1])
  redis.call('EXPIRE', K[4], ttl)
  local n = (#K - 10) / 2
  for i = 1, n do
    local dkey, sidx = K[9 + 2 * i], K[10 + 2 * i]
    local did, sid = A[11 + 2 * i], A[12 + 2 * i]
    redis.call('HSET', dkey, 'ev', A[1], 'sub', sid, 'run', A[5], 'st', 'pending', 'n', 0,
      'base', 0, 'g', 0, 'ts', A[6], 'up', A[6])
    redis.call('EXPIRE', dkey, ttl)
    redis.call('ZADD', K[7], A[6], did)
    redis.call('ZADD', sidx, A[6], did)
    redis.call('RPUSH', K[8], did)
    redis.call('XADD', K[6], '*', 'd', did, 'e', A[1], 'g', 0)
  end
  if n > 0 then redis.call('EXPIRE', K[8], ttl) end
  if A[10] == '1' then finish_run(K[9], K[10], A[12], A[6], ttl, A[11]) end
  return {1, A[1]}
end
"""

# Many accept() calls in one script: the group commit of concurrent callbacks (batching.py).
# What every event shares goes once, so an event packs 17 values (and 4 per delivery), not 24.
ACCEPT_MANY = _ACCEPT_FN + """
-- KEYS: events index, subscriptions version, queue, deliveries index, then per event its
--       dedupe, event, run index, event's delivery list, tracked-run hash and poll schedule
--       keys and (delivery, subscription's delivery index) per delivery.
-- ARGV: ts ms, retention s, then per event its delivery count, event id, body, type,
--       provider, subject, expected version, dedupe mode, ends-run flag, run status,
--       schedule member and (delivery id, subscription id) per delivery.
-- Returns code and value per event, flattened.
local out, k, a = {}, 5, 3
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local K = {KEYS[k], KEYS[k + 1], KEYS[1], KEYS[k + 2], KEYS[2], KEYS[3], KEYS[4],
             KEYS[k + 3], KEYS[k + 4], KEYS[k + 5]}
  local A = {ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[1],
             ARGV[2], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]}
  for i = 1, 2 * n do
    K[10 + i] = KEYS[k + 5 + i]
    A[12 + i] = ARGV[a + 10 + i]
  end
  local r = accept(K, A)
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
-- K: run hash, provider's poll schedule, then accept()'s keys when an event comes with it
-- A: worker token, member, next poll ms, now ms, retention s, field count f, f field/value
--    pairs, then accept()'s args
-- Returns {3} when the lease was lost (another worker owns the run now, or it was untracked),
-- {4} when the run had finished meanwhile, accept()'s answer when an event came, else {5}.
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
  local EK, EA = {}, {}
  for i = 3, #K do EK[#EK + 1] = K[i] end
  for i = 7 + 2 * nf, #A do EA[#EA + 1] = A[i] end
  local res = accept(EK, EA)
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

_FINISH_FN = """
-- Record one attempt and move the delivery to its next state, releasing the queue entry.
-- KEYS: delivery, attempt log, queue, retry set, dead set, subscription, subscriptions version
-- ARGV: stream entry id, retry member, outcome (ok|retry|dead|cancel|gone), attempt JSON,
--       now ms, next due ms, retention s, disable-after ms, attempt log cap, entry generation
-- The subscription is disabled here, in the same step, when it has failed for longer than
-- RELAY_DISABLE_AFTER or answered 410 (outcome 'gone'). Returns the delivery's new status.
local function finish(K, A)
  redis.call('XACK', K[3], 'delivery', A[1])
  redis.call('XDEL', K[3], A[1])
  local st = redis.call('HGET', K[1], 'st')
  if not st then return 'expired' end
  -- An empty attempt means none was made (subscription gone, event expired): nothing to log.
  if A[4] ~= '' then
    redis.call('RPUSH', K[2], A[4])
    redis.call('LTRIM', K[2], -tonumber(A[9]), -1)
    redis.call('EXPIRE', K[2], A[7])
    redis.call('HINCRBY', K[1], 'n', 1)
  end
  -- A delivery another worker already finished (after a takeover) never moves backwards, and
  -- an entry from before a manual requeue (an older generation) no longer decides its state.
  if st ~= 'pending' or redis.call('HGET', K[1], 'g') ~= A[10] then return st end
  local out, now = A[3], A[5]
  local sub_alive = redis.call('EXISTS', K[6]) == 1
  local new = 'pending'
  if out == 'ok' then
    new = 'succeeded'
    if sub_alive then redis.call('HDEL', K[6], 'fail_since') end
  elseif out == 'cancel' then
    new = 'cancelled'
  elseif out == 'gone' then
    new = 'cancelled'
    if sub_alive and redis.call('HGET', K[6], 'status') == 'enabled' then
      redis.call('HSET', K[6], 'status', 'disabled', 'disabled_reason',
        'the endpoint answered 410 Gone', 'updated_at', now)
      redis.call('INCR', K[7])
    end
  else
    if out == 'dead' then new = 'dead' end
    if sub_alive then
      redis.call('HSETNX', K[6], 'fail_since', now)
      local since = tonumber(redis.call('HGET', K[6], 'fail_since'))
      if tonumber(now) - since >= tonumber(A[8])
          and redis.call('HGET', K[6], 'status') == 'enabled' then
        redis.call('HSET', K[6], 'status', 'disabled', 'disabled_reason',
          'failing with no success for longer than RELAY_DISABLE_AFTER', 'updated_at', now)
        redis.call('INCR', K[7])
        new = 'cancelled'
      end
    end
  end
  redis.call('HSET', K[1], 'st', new, 'up', now)
  if new == 'pending' then
    redis.call('HSET', K[1], 'next', A[6])
    redis.call('ZADD', K[4], A[6], A[2])
  elseif new == 'dead' then
    redis.call('ZADD', K[5], now, A[2])
  end
  return new
end
"""

# Many finish() calls in one script: concurrent attempts settle together (batching.py).
# What every attempt shares goes once, so a batch packs 9 values per attempt instead of 19.
FINISH_MANY = _FINISH_FN + """
-- KEYS: queue, retry set, dead set, subscriptions version, then per attempt its delivery,
--       attempt log and subscription.
-- ARGV: retention s, disable-after ms, attempt log cap, now ms, then per attempt its stream
--       entry id, retry member, outcome, attempt JSON, next due ms and entry generation.
-- Returns each delivery's new status, in order.
local out, a = {}, 5
for k = 5, #KEYS, 3 do
  out[#out + 1] = finish(
    {KEYS[k], KEYS[k + 1], KEYS[1], KEYS[2], KEYS[3], KEYS[k + 2], KEYS[4]},
    {ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[4], ARGV[a + 4], ARGV[1], ARGV[2],
     ARGV[3], ARGV[a + 5]})
  a = a + 6
end
return out
"""

LOAD = """
-- What a worker needs to attempt deliveries, in one call. KEYS: subscriptions version, then
-- (delivery hash, event hash) per delivery. Returns the version, then per delivery its hash
-- as a flat field/value list and the event's body (false when it has expired).
local out = {redis.call('GET', KEYS[1]) or '0'}
for i = 2, #KEYS, 2 do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
  out[#out + 1] = redis.call('HGET', KEYS[i + 1], 'body')
end
return out
"""

DEFER = """
-- Hand queue entries back for later without counting an attempt (subscription at capacity,
-- worker shutting down). KEYS: queue, retry set.
-- ARGV: (stream entry id, retry member, due ms) for each entry.
for i = 1, #ARGV, 3 do
  redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 1])
  redis.call('XACK', KEYS[1], 'delivery', ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return #ARGV / 3
"""

PROMOTE = """
-- Move retries that have come due into the queue, atomically, so none is lost or doubled.
-- KEYS: retry set, queue. ARGV: now ms, max count.
-- Returns {moved, score of the next retry or false}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local d, e, g = string.match(m, '^(%S+) (%S+) (%S+)$')
  redis.call('XADD', KEYS[2], '*', 'd', d, 'e', e, 'g', g)
  redis.call('ZREM', KEYS[1], m)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, head[2] or false}
"""

REQUEUE = """
-- Queue a delivery for an attempt now (manual retry, recover), restarting its schedule.
-- A new generation makes any older queue entry of this delivery stale, so it is sent once.
-- KEYS: delivery, queue, retry set, dead set. ARGV: delivery id, now ms.
-- Returns the previous status, or false when the delivery no longer exists.
local st, ev, g, n = unpack(redis.call('HMGET', KEYS[1], 'st', 'ev', 'g', 'n'))
if not st then return false end
local member = ARGV[1] .. ' ' .. ev .. ' ' .. g
if redis.call('ZREM', KEYS[3], member) == 0 and st == 'pending' then
  -- Already in the queue or being attempted: queueing it again would only double it.
  return st
end
redis.call('ZREM', KEYS[4], member)
local gen = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HSET', KEYS[1], 'st', 'pending', 'base', n, 'up', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'd', ARGV[1], 'e', ev, 'g', gen)
return st
"""

CANCEL = """
-- Cancel pending deliveries of a deleted or disabled subscription.
-- KEYS: retry set, then one delivery key per delivery. ARGV: now ms, then the delivery ids.
local n = 0
for i = 2, #KEYS do
  local st, ev, g = unpack(redis.call('HMGET', KEYS[i], 'st', 'ev', 'g'))
  if st == 'pending' then
    redis.call('HSET', KEYS[i], 'st', 'cancelled', 'up', ARGV[1])
    redis.call('ZREM', KEYS[1], ARGV[i] .. ' ' .. ev .. ' ' .. g)
    n = n + 1
  end
end
return n
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
