"""Lua scripts for every multi-key step that must be atomic; all keys share one hash slot."""

from __future__ import annotations

ACCEPT = """
-- Store an event and queue its deliveries in one atomic step, or report why not.
-- KEYS: dedupe, event, events index, run index, subscriptions version, queue, deliveries index,
--       event's delivery list, then (delivery, subscription's delivery index) per delivery.
-- ARGV: event id, body, type, provider, subject, ts ms, retention s, expected version
--       ('*' skips the check), dedupe flag, then (delivery id, subscription id) per delivery.
-- Returns {0, existing id} for a duplicate, {2, version} when the caller's subscription cache
-- is stale (so no delivery is created for a subscription it has not seen), {1, id} when stored.
if ARGV[9] == '1' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing} end
end
if ARGV[8] ~= '*' then
  local ver = redis.call('GET', KEYS[5]) or '0'
  if ver ~= ARGV[8] then return {2, ver} end
end
local ttl = ARGV[7]
if ARGV[9] == '1' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl) end
redis.call('HSET', KEYS[2], 'body', ARGV[2], 'type', ARGV[3], 'provider', ARGV[4],
  'subject', ARGV[5], 'ts', ARGV[6])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
redis.call('EXPIRE', KEYS[4], ttl)
local n = (#KEYS - 8) / 2
for i = 1, n do
  local dkey, sidx = KEYS[7 + 2 * i], KEYS[8 + 2 * i]
  local did, sid = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
  redis.call('HSET', dkey, 'ev', ARGV[1], 'sub', sid, 'run', ARGV[5], 'st', 'pending', 'n', 0,
    'base', 0, 'g', 0, 'ts', ARGV[6], 'up', ARGV[6])
  redis.call('EXPIRE', dkey, ttl)
  redis.call('ZADD', KEYS[7], ARGV[6], did)
  redis.call('ZADD', sidx, ARGV[6], did)
  redis.call('RPUSH', KEYS[8], did)
  redis.call('XADD', KEYS[6], '*', 'd', did, 'e', ARGV[1], 'g', 0)
end
if n > 0 then redis.call('EXPIRE', KEYS[8], ttl) end
return {1, ARGV[1]}
"""

FINISH = """
-- Record one attempt and move the delivery to its next state, releasing the queue entry.
-- KEYS: delivery, attempt log, queue, retry set, dead set, subscription, subscriptions version
-- ARGV: stream entry id, retry member, outcome (ok|retry|dead|cancel|gone), attempt JSON,
--       now ms, next due ms, retention s, disable-after ms, attempt log cap, entry generation
-- The subscription is disabled here, in the same step, when it has failed for longer than
-- RELAY_DISABLE_AFTER or answered 410 (outcome 'gone'). Returns the delivery's new status.
redis.call('XACK', KEYS[3], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
local st = redis.call('HGET', KEYS[1], 'st')
if not st then return 'expired' end
-- An empty attempt means none was made (subscription gone, event expired): nothing to log.
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[4])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[9]), -1)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'n', 1)
end
-- A delivery another worker already finished (after a takeover) never moves backwards, and
-- an entry from before a manual requeue (an older generation) no longer decides its state.
if st ~= 'pending' or redis.call('HGET', KEYS[1], 'g') ~= ARGV[10] then return st end
local out, now = ARGV[3], ARGV[5]
local sub_alive = redis.call('EXISTS', KEYS[6]) == 1
local new = 'pending'
if out == 'ok' then
  new = 'succeeded'
  if sub_alive then redis.call('HDEL', KEYS[6], 'fail_since') end
elseif out == 'cancel' then
  new = 'cancelled'
elseif out == 'gone' then
  new = 'cancelled'
  if sub_alive and redis.call('HGET', KEYS[6], 'status') == 'enabled' then
    redis.call('HSET', KEYS[6], 'status', 'disabled', 'disabled_reason',
      'the endpoint answered 410 Gone', 'updated_at', now)
    redis.call('INCR', KEYS[7])
  end
else
  if out == 'dead' then new = 'dead' end
  if sub_alive then
    redis.call('HSETNX', KEYS[6], 'fail_since', now)
    local since = tonumber(redis.call('HGET', KEYS[6], 'fail_since'))
    if tonumber(now) - since >= tonumber(ARGV[8])
        and redis.call('HGET', KEYS[6], 'status') == 'enabled' then
      redis.call('HSET', KEYS[6], 'status', 'disabled', 'disabled_reason',
        'failing with no success for longer than RELAY_DISABLE_AFTER', 'updated_at', now)
      redis.call('INCR', KEYS[7])
      new = 'cancelled'
    end
  end
end
redis.call('HSET', KEYS[1], 'st', new, 'up', now)
if new == 'pending' then
  redis.call('HSET', KEYS[1], 'next', ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[2])
elseif new == 'dead' then
  redis.call('ZADD', KEYS[5], now, ARGV[2])
end
return new
"""

DEFER = """
-- Hand a queue entry back for later without counting an attempt (subscription at capacity,
-- worker shutting down). KEYS: queue, retry set. ARGV: stream entry id, retry member, due ms.
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('XACK', KEYS[1], 'delivery', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
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
