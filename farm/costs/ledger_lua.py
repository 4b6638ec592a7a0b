"""The ledger's Lua: budgets and the cost breaker, checked and reserved inside the limiter's
acquire script (one atomic step with the rate-limit acquire: farm.capacity.scripts), settled
after the call (``SETTLE``), and seeded from Postgres (``SEED``). ``farm.costs.budgets`` and
``farm.costs.spend_rate`` are the pure twins; ``farm.costs.ledger`` lays out keys and args.

Amounts are whole nano-dollars, added with HINCRBY (exact 64-bit integers).

In the acquire script the ledger's keys follow the limiter's (from KEYS[kb + 1]) and its
arguments follow the limiter's (from ARGV[ab + 1]):
  ARGV ab+1 nb, ab+2 cost, ab+3 member ("grant|cost"), ab+4 busy wait s, ab+5 reservation
       ttl s, then per budget: id, period end (unix s); then nbr, then per breaker: name,
       threshold (nano/min), window s, close share, wait s
  KEYS per budget: def, totals (spent, reserved, seeded), reservations (zset member ->
       expiry); then per breaker: window (s, cur, prev), open flag
"""

# a spend window as of now (farm.costs.spend_rate.roll); num() must be defined before
WINDOW = r"""
local function roll_window(key, now, w)
  local raw = redis.call('HMGET', key, 's', 'cur', 'prev')
  local s, cur, prev = num(raw[1]), num(raw[2]) or 0, num(raw[3]) or 0
  if s == nil or now >= s + 2 * w then return math.floor(now / w) * w, 0, 0 end
  if now >= s + w then return s + w, 0, cur end
  return s, cur, prev
end
"""

# functions used by the acquire script; PRELUDE (farm.capacity.scripts) comes first
LEDGER_LIB = WINDOW + r"""
local function ledger_check(now, kb, ab)
  local nb = tonumber(ARGV[ab + 1]) or 0
  local bb = ab + 5 + 2 * nb
  local nbr = tonumber(ARGV[bb + 1]) or 0
  local kk = kb + 3 * nb
  for j = 1, nbr do
    local a = bb + 1 + 5 * (j - 1)
    local wkey, okey = KEYS[kk + 2 * j - 1], KEYS[kk + 2 * j]
    local w = tonumber(ARGV[a + 3])
    local s, cur, prev = roll_window(wkey, now, w)
    local rate = (prev * math.max(0, 1 - (now - s) / w) + cur) * 60 / w
    local threshold, share = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
    local is_open = redis.call('EXISTS', okey) == 1
    if is_open and rate < share * threshold then
      redis.call('DEL', okey)
      is_open = false
    elseif not is_open and rate >= threshold then
      redis.call('SET', okey, fmt(now), 'EX', math.ceil(10 * w))
      return {0, 'cost breaker ' .. ARGV[a + 1] .. ' open', ARGV[a + 5], 'opened', fmt(rate)}
    end
    if is_open then
      return {0, 'cost breaker ' .. ARGV[a + 1] .. ' open', ARGV[a + 5], '', fmt(rate)}
    end
  end
  local cost = tonumber(ARGV[ab + 2])
  for i = 1, nb do
    local def = redis.call('HMGET', KEYS[kb + 3 * i - 2], 'limit', 'mode', 'on_exceed')
    local limit = num(def[1])
    if limit then
      local tkey, rkey = KEYS[kb + 3 * i - 1], KEYS[kb + 3 * i]
      local tot = redis.call('HMGET', tkey, 'seeded', 'spent', 'reserved')
      if not tot[1] then return {3, i} end
      local gone = redis.call('ZRANGEBYSCORE', rkey, '-inf', fmt(now))
      if #gone > 0 then
        local back = 0
        for _, m in ipairs(gone) do back = back + tonumber(string.match(m, '|(%d+)$')) end
        redis.call('ZREMRANGEBYSCORE', rkey, '-inf', fmt(now))
        tot[3] = redis.call('HINCRBY', tkey, 'reserved', -back)
      end
      local spent, reserved = num(tot[2]) or 0, num(tot[3]) or 0
      if def[2] == 'hard' then
        local id = ARGV[ab + 5 + 2 * i - 1]
        if spent + cost > limit then
          local fail = 0
          if def[3] == 'fail' then fail = 1 end
          local left = tonumber(ARGV[ab + 5 + 2 * i]) - now
          redis.call('HSET', tkey, 'refused', fmt(now))  -- for the cockpit: it turns calls away
          return {4, id, fmt(math.max(1, left)), fail, fmt(spent), fmt(limit)}
        end
        if spent + reserved + cost > limit then
          return {0, 'budget ' .. id .. ': in-flight reservations', ARGV[ab + 4]}
        end
      end
    end
  end
  return nil
end
local function ledger_commit(now, kb, ab)
  local nb = tonumber(ARGV[ab + 1]) or 0
  local cost, member, ttl = ARGV[ab + 2], ARGV[ab + 3], tonumber(ARGV[ab + 5])
  for i = 1, nb do
    if redis.call('EXISTS', KEYS[kb + 3 * i - 2]) == 1 then
      local tkey, rkey = KEYS[kb + 3 * i - 1], KEYS[kb + 3 * i]
      local expire = math.ceil(tonumber(ARGV[ab + 5 + 2 * i])) + 86400
      redis.call('HINCRBY', tkey, 'reserved', cost)
      redis.call('ZADD', rkey, fmt(now + ttl), member)
      redis.call('EXPIREAT', tkey, expire)
      redis.call('EXPIREAT', rkey, expire)
    end
  end
end
"""

# KEYS: per budget totals, reservations, def; then per breaker window
# ARGV: now nb member reserved actual nbr, then per breaker: window s
# Returns the 1-based indexes of the budgets whose spend crossed their alert line (the def's
# 'alert', nano-USD) with this call.
SETTLE = r"""
local function num(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end
local function fmt(x) return string.format('%.17g', x) end
""" + WINDOW + r"""
local now = num(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local nb, member, reserved, actual = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local crossed = {}
for i = 1, nb do
  local tkey, rkey, dkey = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if redis.call('ZREM', rkey, member) == 1 then
    redis.call('HINCRBY', tkey, 'reserved', '-' .. reserved)
  end
  if redis.call('HEXISTS', tkey, 'seeded') == 1 then
    local after = redis.call('HINCRBY', tkey, 'spent', actual)
    local line = num(redis.call('HGET', dkey, 'alert'))
    if line and after >= line and after - tonumber(actual) < line then
      crossed[#crossed + 1] = i
    end
  end
end
local nbr = tonumber(ARGV[6])
for j = 1, nbr do
  local key, w = KEYS[3 * nb + j], tonumber(ARGV[6 + j])
  local s, cur, prev = roll_window(key, now, w)
  redis.call('HSET', key, 's', fmt(s), 'cur', fmt(cur + tonumber(actual)), 'prev', fmt(prev))
  redis.call('EXPIRE', key, math.ceil(3 * w))
end
return crossed
"""

# KEYS: totals   ARGV: spent (nano) expire_at
# The first seed of a period wins; a period counted since it began is never seeded again.
SEED = r"""
if redis.call('HSETNX', KEYS[1], 'seeded', '1') == 1 then
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'reserved', '0')
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
