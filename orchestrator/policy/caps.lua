-- Check every cap window of one person and reserve in all of them, or in none.
--
-- KEYS[1]  epoch marker: present once caps were rebuilt from SQL; absent on an empty Redis
-- KEYS[2]  the person's reservations on every channel (member "<channel>|<key>")
-- KEYS[3]  the person's reservations on this channel (member "<key>")
-- KEYS[4]  the person's provisional members ("<channel>|<key>"): reservations a rebuild
--          loaded for touches that were being gated (SQL cannot say whether their check
--          had passed)
-- ARGV[1]  key: the touch's idempotency key
-- ARGV[2]  member for KEYS[2]: "<channel>|<key>"
-- ARGV[3]  now, business-time epoch ms (the caller's clock; never Redis TIME)
-- ARGV[4]  garbage-collection EXPIRE in real seconds (longer than any window + max_defer)
-- ARGV[5]  trim: drop reservations scored below this (outside every window)
-- ARGV[6]  number of rules, then 6 values per rule:
--          scope (1 = KEYS[2], 2 = KEYS[3]), max, ZCOUNT min, ZCOUNT max,
--          kind ("r" rolling: free = k-th oldest counted + param; "c" calendar: free = param),
--          param (rolling window ms, or calendar window end ms)
--
-- Trimming touches the all-channel set and this channel's set only. A member of another
-- channel's set may outlive its trimmed twin in KEYS[2] until that channel grants again or
-- the set expires; it is older than every window, so it counts nowhere, and whether a key
-- is held is read from KEYS[2].
--
-- A provisional key counts against the person's other touches like any reservation, but its
-- own touch is checked again when it asks: it is taken out and reserved anew, or refused.
--
-- Answers: 1 reserved, 2 already held (a retry), -1 needs rebuild (marker missing),
--          {first refusing rule (1-based), ms when every refusing window frees a slot or -1}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then
  if redis.call('SREM', KEYS[4], ARGV[2]) == 0 then
    return 2
  end
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
end

local refused, free_at = 0, 0
for i = 0, tonumber(ARGV[6]) - 1 do
  local base = 7 + i * 6
  local set = KEYS[1 + tonumber(ARGV[base])]
  local max = tonumber(ARGV[base + 1])
  local count = redis.call('ZCOUNT', set, ARGV[base + 2], ARGV[base + 3])
  if count >= max then
    if refused == 0 then
      refused = i + 1
    end
    local free = -1
    if max > 0 then
      if ARGV[base + 4] == 'r' then
        local kth = redis.call('ZRANGEBYSCORE', set, ARGV[base + 2], ARGV[base + 3],
          'WITHSCORES', 'LIMIT', count - max, 1)
        free = tonumber(kth[2]) + tonumber(ARGV[base + 5])
      else
        free = tonumber(ARGV[base + 5])
      end
    end
    if free == -1 or free_at == -1 then
      free_at = -1
    elseif free > free_at then
      free_at = free
    end
  end
end
if refused > 0 then
  return {refused, free_at}
end

local trim = '(' .. ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', trim)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', trim)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
