"""The limiter's Lua scripts: ``farm.capacity.limits``'s arithmetic, step for step, run
atomically inside Redis on Redis time (``farm.capacity.limiter`` calls them; the keys are
listed there)."""

from farm.costs.ledger_lua import LEDGER_LIB

# Shared by the scripts. Numbers go to Redis as '%.17g' strings: exact round trips, so the
# script and the Python twin compute on the very same doubles.
PRELUDE = r"""
local KINDS = {'rpm', 'itpm', 'otpm'}
local LN2 = 0.6931471805599453
local EPS = 1e-9
local function num(v)
  if v == false or v == nil or v == '' then return nil end
  return tonumber(v)
end
local function fmt(x) return string.format('%.17g', x) end
local function clock(arg)
  local now = num(arg)
  if now then return now end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function caps_of(obs_key, thr_key, base_key, c1, c2, c3, target)
  local obs = redis.call('HMGET', obs_key, 'rpm', 'itpm', 'otpm')
  local set = num(redis.call('GET', thr_key))
  local thr = set or 100
  local conf = {num(c1), num(c2), num(c3)}
  local caps, any = {}, false
  for i, k in ipairs(KINDS) do
    local base = num(obs[i]) or conf[i]
    if not base and k == 'rpm' and set then base = num(redis.call('GET', base_key)) end
    if base then caps[k] = base * (thr / 100) * target; any = true end
  end
  return caps, any, thr
end
-- the burst in force (farm.capacity.pacing.burst_now): learned {s, t}, grown back
local function burst_of(key, now, conf, mn, probe)
  local b = redis.call('HMGET', key, 's', 't')
  local s, t = num(b[1]), num(b[2])
  if s == nil or t == nil then return conf end
  local grown = s + math.max(0, now - t) * (conf / probe)
  return math.max(mn, math.min(conf, grown))
end
local function learn(key, secs, now, probe)
  redis.call('HSET', key, 's', fmt(secs), 't', fmt(now))
  redis.call('EXPIRE', key, math.ceil(probe) + 60)
end
local function size_of(caps, k, burst) return caps[k] * burst / 60 end
local function refill(bkey, caps, now, burst)
  local raw = redis.call('HMGET', bkey, 't', 'rpm', 'itpm', 'otpm')
  local t, lv = num(raw[1]), {}
  for i, k in ipairs(KINDS) do
    local cap = caps[k]
    if cap then
      local old, size = num(raw[i + 1]), size_of(caps, k, burst)
      if old == nil or t == nil then lv[k] = size
      else lv[k] = math.min(size, old + math.max(0, now - t) * (cap / 60)) end
    end
  end
  return lv
end
local function store(bkey, caps, lv, now)
  local args = {'t', fmt(now)}
  for _, k in ipairs(KINDS) do
    if caps[k] then args[#args + 1] = k; args[#args + 1] = fmt(lv[k]) end
  end
  redis.call('HSET', bkey, unpack(args))
  redis.call('EXPIRE', bkey, 180)
end
local function decayed(key, now, half)
  local u = redis.call('HMGET', key, 'n', 't')
  if num(u[1]) and num(u[2]) then return num(u[1]) * 2 ^ (-(now - num(u[2])) / half) end
  return 0
end
local function count(rkey, now, window)
  redis.call('HSET', rkey, 'n', fmt(decayed(rkey, now, window / 2) + 1), 't', fmt(now))
  redis.call('EXPIRE', rkey, math.ceil(5 * window))
end
"""

# KEYS: bucket observed paused throttle tenants inflight t-usage t-inflight base rate burst
#       answered starved, then the ledger's (farm.costs.ledger_lua)
# ARGV: now gid tenant in out prio rpm itpm otpm conc target res1..3 share1..3 window ttl
#       slot_wait over_share_reserve max_delay burst_s min_burst_s probe_s discovery_slots, then the
#       ledger's
# The budgets and the cost breaker are checked before the limits (a call they stop takes no
# rate-limit tokens) and reserved with them, in this one atomic step.
ACQUIRE = PRELUDE + LEDGER_LIB + r"""
local now = clock(ARGV[1])
local gid, tenant = ARGV[2], ARGV[3]
local paused = num(redis.call('GET', KEYS[3]))
if paused and paused > now then return {0, 'paused (429)', fmt(paused - now)} end
local refused = ledger_check(now, 13, 26)
if refused then return refused end
local target = tonumber(ARGV[11])
local caps, any, thr = caps_of(KEYS[2], KEYS[4], KEYS[9], ARGV[7], ARGV[8], ARGV[9], target)
local mc, conc, slots_full = num(ARGV[10]), nil, 'concurrency'
local answered = redis.call('EXISTS', KEYS[12]) == 1
local window, ttl = tonumber(ARGV[18]), tonumber(ARGV[19])
if mc then conc = math.max(1, math.floor(mc * thr / 100 + EPS))
elseif not any and tonumber(ARGV[26]) > 0 and not answered then
  conc = tonumber(ARGV[26])  -- nothing known yet: wait for the first answer
  slots_full = 'discovery'
end
if not any and conc == nil then
  count(KEYS[10], now, window)
  ledger_commit(now, 13, 26)
  return {2}
end
local idx = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now - window))
redis.call('ZADD', KEYS[5], fmt(now), tenant)
redis.call('EXPIRE', KEYS[5], math.ceil(2 * window))
local n_active = redis.call('ZCARD', KEYS[5])
local half = window / 2
local used = decayed(KEYS[7], now, half)
-- fairness (farm.capacity.fairness): a starved tenant is another one, waiting, with its count
local st = redis.call('HMGET', KEYS[13], 'tenant', 'n', 't', 'until')
local other = nil
if st[1] and num(st[4]) and num(st[4]) > now and st[1] ~= tenant then
  other = num(st[2]) * 2 ^ (-(now - num(st[3])) / half)
end
local over = ''
if other and used > 1.25 * other + 1 then  -- FAIR_SLACK
  idx = math.min(idx + 1, 2)
  over = 'over'
end
local function refuse(reason, wait)
  if over == '' and not (other and used >= other) then  -- STARVE_GRACE_S
    redis.call('HSET', KEYS[13], 'tenant', tenant, 'n', fmt(used), 't', fmt(now),
               'until', fmt(now + wait + 1.0))
    redis.call('EXPIRE', KEYS[13], math.ceil(wait + 1.0) + 1)
  end
  return {0, reason, fmt(wait), '', over}
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', fmt(now))
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', fmt(now))
if conc then
  local cap = math.max(1, math.floor(conc * tonumber(ARGV[15 + idx]) + EPS))
  if n_active > 1 and redis.call('ZCARD', KEYS[8]) >= math.ceil(conc / n_active) then
    return refuse('tenant-concurrency', tonumber(ARGV[20]))
  end
  if redis.call('ZCARD', KEYS[6]) >= cap then return refuse(slots_full, tonumber(ARGV[20])) end
end
local burst = burst_of(KEYS[11], now, tonumber(ARGV[23]), tonumber(ARGV[24]),
                      tonumber(ARGV[25]))
if tonumber(ARGV[26]) > 0 and not answered then  -- nothing heard yet: start small
  burst = math.min(burst, tonumber(ARGV[24]))
end
local lv = refill(KEYS[1], caps, now, burst)
local costs = {rpm = 1, itpm = tonumber(ARGV[4]), otpm = tonumber(ARGV[5])}
local share = tonumber(ARGV[12 + idx])
if over ~= '' then share = tonumber(ARGV[21]) end
local wait, reason, delay = 0, nil, 0
local max_delay = tonumber(ARGV[22])
for _, k in ipairs(KINDS) do
  local cap = caps[k]
  if cap then
    local rate, size = cap / 60, size_of(caps, k, burst)
    local ahead = max_delay * rate
    local cost = math.min(costs[k], size)
    local need = math.min(cost - ahead + share * (size + ahead), size)
    if lv[k] < need and (need - lv[k]) / rate > wait then
      wait, reason = (need - lv[k]) / rate, k
    end
    delay = math.max(delay, (cost - lv[k]) / rate)
  end
end
if reason then return refuse(reason, wait) end
for _, k in ipairs(KINDS) do
  if caps[k] then lv[k] = math.max(-caps[k], lv[k] - costs[k]) end
end
store(KEYS[1], caps, lv, now)
redis.call('HSET', KEYS[7], 'n', fmt(used + 1), 't', fmt(now))
redis.call('EXPIRE', KEYS[7], math.ceil(5 * window))
redis.call('ZADD', KEYS[6], fmt(now + ttl), gid .. '|' .. tenant)
redis.call('ZADD', KEYS[8], fmt(now + ttl), gid)
redis.call('EXPIRE', KEYS[6], math.ceil(ttl) + 1)
redis.call('EXPIRE', KEYS[8], math.ceil(ttl) + 1)
if st[1] == tenant then redis.call('DEL', KEYS[13]) end
count(KEYS[10], now, window)
ledger_commit(now, 13, 26)
return {1, fmt(delay)}
"""

# KEYS: bucket observed throttle inflight t-inflight base burst answered
# ARGV: now member gid reserved_in reserved_out actual_in actual_out rpm itpm otpm target
#       burst_s min_burst_s probe_s discovery_slots
RELEASE = PRELUDE + r"""
local removed = redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[3])
if removed == 0 then return 0 end
local ai, ao = num(ARGV[6]), num(ARGV[7])
if ai == nil and ao == nil then return 1 end
local now = clock(ARGV[1])
local caps, any = caps_of(KEYS[2], KEYS[3], KEYS[6], ARGV[8], ARGV[9], ARGV[10],
                         tonumber(ARGV[11]))
if not any then return 1 end
local burst = burst_of(KEYS[7], now, tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]))
if tonumber(ARGV[15]) > 0 and redis.call('EXISTS', KEYS[8]) == 0 then  -- not answered yet
  burst = math.min(burst, tonumber(ARGV[13]))
end
local lv = refill(KEYS[1], caps, now, burst)
local fix = {itpm = {tonumber(ARGV[4]), ai}, otpm = {tonumber(ARGV[5]), ao}}
for k, pair in pairs(fix) do
  if pair[2] and caps[k] then
    lv[k] = math.max(-caps[k], math.min(size_of(caps, k, burst), lv[k] + (pair[1] - pair[2])))
  end
end
store(KEYS[1], caps, lv, now)
return 1
"""

# KEYS: observed bucket throttle models base burst answered
# ARGV: now model limit_rpm limit_itpm limit_otpm rem_rpm rem_itpm rem_otpm rpm itpm otpm target
#       burst_s min_burst_s probe_s seen_burst
OBSERVE = PRELUDE + r"""
local now = clock(ARGV[1])
redis.call('SET', KEYS[7], '1', 'EX', 86400)
for i, k in ipairs(KINDS) do
  local v = num(ARGV[2 + i])
  if v then redis.call('HSET', KEYS[1], k, ARGV[2 + i]); redis.call('EXPIRE', KEYS[1], 86400) end
end
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('EXPIRE', KEYS[4], 604800)
local conf, mn, probe = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local burst = burst_of(KEYS[6], now, conf, mn, probe)
local seen = num(ARGV[16])
if seen and seen < burst then
  burst = math.max(mn, seen)
  learn(KEYS[6], burst, now, probe)
end
local target = tonumber(ARGV[12])
local caps = caps_of(KEYS[1], KEYS[3], KEYS[5], ARGV[9], ARGV[10], ARGV[11], target)
local lower = false
for i, k in ipairs(KINDS) do
  if num(ARGV[5 + i]) and caps[k] then lower = true end
end
if not lower then return 0 end
local lv = refill(KEYS[2], caps, now, burst)
for i, k in ipairs(KINDS) do
  local rem = num(ARGV[5 + i])
  if rem and caps[k] then lv[k] = math.min(lv[k], rem * target) end
end
store(KEYS[2], caps, lv, now)
return 1
"""

# KEYS: paused models burst   ARGV: now seconds model burst_s min_burst_s probe_s
PAUSE = PRELUDE + r"""
local now, secs = clock(ARGV[1]), tonumber(ARGV[2])
local untl = now + secs
local old = num(redis.call('GET', KEYS[1]))
if old == nil or old <= now then  -- a 429 that starts a pause halves the burst
  local mn, probe = tonumber(ARGV[5]), tonumber(ARGV[6])
  learn(KEYS[3], math.max(mn, burst_of(KEYS[3], now, tonumber(ARGV[4]), mn, probe) / 2), now,
        probe)
end
if old == nil or old < untl then
  redis.call('SET', KEYS[1], fmt(untl), 'PX', math.ceil(secs * 1000) + 60000)
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], 604800)
return 1
"""

# KEYS: throttle base rate observed models
# ARGV: now model percent ('' lifts) rpm itpm otpm window max_concurrency
# Returns {1, base or ''} or, with no limits and no traffic to measure, {0, measured}.
THROTTLE = PRELUDE + r"""
local base = nil
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  local obs = redis.call('HMGET', KEYS[4], 'rpm', 'itpm', 'otpm')
  local limited = num(ARGV[8])
  for i = 1, 3 do limited = limited or num(obs[i]) or num(ARGV[3 + i]) end
  if not limited then
    base = num(redis.call('GET', KEYS[2]))
    if base == nil then
      local half = tonumber(ARGV[7]) / 2
      base = decayed(KEYS[3], clock(ARGV[1]), half) * LN2 / half * 60
      if base < 1.0 then return {0, fmt(base)} end  -- limits.MIN_BASE_RPM
      redis.call('SET', KEYS[2], fmt(base))
    end
  end
  redis.call('SET', KEYS[1], ARGV[3])
end
redis.call('SADD', KEYS[5], ARGV[2])
redis.call('EXPIRE', KEYS[5], 604800)
if base then return {1, fmt(base)} end
return {1, ''}
"""
