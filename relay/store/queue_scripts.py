"""Lua scripts of the delivery queue: settle an attempt, load, park, promote, requeue, cancel."""

from __future__ import annotations

# A delivery hash's field names are listed in deliveries.FIELDS; these scripts write the same.

_FINISH_FN = """
-- Record one attempt and move the delivery to its next state, releasing the queue entry.
-- KEYS: delivery, attempt log, queue, retry set, dead set, subscription, subscriptions version
-- ARGV: stream entry id, retry member, outcome (queue.Outcome: ok|retry|dead|cancel|gone),
--       attempt JSON, now ms, next due ms, retention s, disable-after ms, attempt log cap,
--       entry generation
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
-- (delivery hash, event hash) per delivery. ARGV: the delivery fields to read, in order.
-- Returns the version, then per delivery its fields' values (all false when it has expired)
-- and the event's body (false when it has expired).
local out = {redis.call('GET', KEYS[1]) or '0'}
for i = 2, #KEYS, 2 do
  out[#out + 1] = redis.call('HMGET', KEYS[i], unpack(ARGV))
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
