-- One tenant's shared limits, for one replica, in one round trip: the RPM and TPM
-- buckets (refilled on the server's clock) and the day's and month's budgets.
--
-- KEYS: 1 the rate buckets, 2 the day's budget, 3 the month's (one hash tag: one slot).
-- ARGV:
--   1 replica id
--   2 rpm, 3 tpm                       limits per minute; 0 = none
--   4 requests back, 5 tokens back     unused lease returned (negative: debt charged)
--   6 requests min, 7 requests want    granted all or nothing: at least min, at most want
--   8 tokens min, 9 tokens want
--   10 day tokens, 11 day USD, 12 month tokens, 13 month USD   budgets; negative = none
--   14 day tokens spent, 15 day USD spent, 16 month tokens spent, 17 month USD spent
--                                      by this replica in the period (absolute)
--   18 held tokens min, 19 held tokens want, 20 held USD min, 21 held USD want
--                                      the budget this replica may hold, in flight or
--                                      not yet spent (absolute)
--   22 how long a replica's hold counts without being renewed (ms)
--   23 the day key's life (s), 24 the month key's (s)
--
-- Returns strings: { ok, requests, tokens, held tokens, held USD, refused by, wait ms,
--   day tokens, day USD, month tokens, month USD, requests left, tokens left } where
--   day and month are everyone's spending in the period, and what is left is in the
--   buckets (empty when there is no such limit); refused by is "", "requests", "tokens", "day_tokens",
--   "day_usd", "month_tokens" or "month_usd"; wait ms is -1 when waiting cannot help.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local me = ARGV[1]
local ttl = tonumber(ARGV[22])

-- A bucket: its level after refill and what came back; what may be granted.
local function bucket(level_field, at_field, limit, back, min, want)
  if limit <= 0 then
    return nil, want, 0
  end
  local level = tonumber(redis.call('HGET', KEYS[1], level_field))
  local at = tonumber(redis.call('HGET', KEYS[1], at_field))
  if level == nil or at == nil then
    level, at = limit, now
  end
  level = math.min(limit, level + math.max(0, now - at) * limit / 60000)
  level = math.max(-limit, math.min(limit, level + back))
  if min > limit then
    return level, 0, -1
  end
  if level < min then
    return level, 0, math.ceil((min - level) * 60000 / limit)
  end
  return level, math.max(min, math.min(want, math.floor(level))), 0
end

-- A period's budget: everyone's spending, and what this replica may hold.
local function budget(key, limit_tokens, limit_usd, spent_tokens, spent_usd)
  redis.call('HSET', key, 'st:' .. me, spent_tokens, 'su:' .. me, spent_usd)
  local fields = redis.call('HGETALL', key)
  local all = {}
  for i = 1, #fields, 2 do
    all[fields[i]] = fields[i + 1]
  end
  local total_tokens, total_usd, others_tokens, others_usd = 0, 0, 0, 0
  for field, value in pairs(all) do
    local kind, who = string.sub(field, 1, 2), string.sub(field, 4)
    if kind == 'st' then
      total_tokens = total_tokens + tonumber(value)
    elseif kind == 'su' then
      total_usd = total_usd + tonumber(value)
    elseif who ~= me and (kind == 'ht' or kind == 'hu') then
      local renewed = tonumber(all['ha:' .. who] or '0')
      if now - renewed <= ttl then
        if kind == 'ht' then
          others_tokens = others_tokens + tonumber(value)
        else
          others_usd = others_usd + tonumber(value)
        end
      end
    end
  end
  local room_tokens, room_usd = math.huge, math.huge
  if limit_tokens >= 0 then
    room_tokens = limit_tokens - total_tokens - others_tokens
  end
  if limit_usd >= 0 then
    room_usd = limit_usd - total_usd - others_usd
  end
  return room_tokens, room_usd, total_tokens, total_usd
end

local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
local requests_level, requests, requests_wait =
  bucket('rl', 'ra', rpm, tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7]))
local tokens_level, tokens, tokens_wait =
  bucket('tl', 'ta', tpm, tonumber(ARGV[5]), tonumber(ARGV[8]), tonumber(ARGV[9]))

local day_room_tokens, day_room_usd, day_tokens, day_usd =
  budget(KEYS[2], tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[14]), tonumber(ARGV[15]))
local month_room_tokens, month_room_usd, month_tokens, month_usd =
  budget(KEYS[3], tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[16]), tonumber(ARGV[17]))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[23]))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[24]))

local held_min_tokens, held_want_tokens = tonumber(ARGV[18]), tonumber(ARGV[19])
local held_min_usd, held_want_usd = tonumber(ARGV[20]), tonumber(ARGV[21])
local held_tokens = math.max(0, math.min(held_want_tokens, day_room_tokens, month_room_tokens))
local held_usd = math.max(0, math.min(held_want_usd, day_room_usd, month_room_usd))

local refused, wait = '', 0
if requests_wait ~= 0 then
  refused, wait = 'requests', requests_wait
elseif tokens_wait ~= 0 then
  refused, wait = 'tokens', tokens_wait
elseif held_tokens < held_min_tokens then
  refused = day_room_tokens <= month_room_tokens and 'day_tokens' or 'month_tokens'
elseif held_usd < held_min_usd then
  refused = day_room_usd <= month_room_usd and 'day_usd' or 'month_usd'
end

-- What came back is kept either way; a grant only when everything fits.
if refused ~= '' then
  requests, tokens = 0, 0
end
if requests_level ~= nil then
  redis.call('HSET', KEYS[1], 'rl', requests_level - requests, 'ra', now)
end
if tokens_level ~= nil then
  redis.call('HSET', KEYS[1], 'tl', tokens_level - tokens, 'ta', now)
end
redis.call('PEXPIRE', KEYS[1], 120000)
for _, key in ipairs({ KEYS[2], KEYS[3] }) do
  if refused == '' then
    redis.call('HSET', key, 'ht:' .. me, held_tokens, 'hu:' .. me, held_usd, 'ha:' .. me, now)
  else
    redis.call('HSET', key, 'ha:' .. me, now)
  end
end
if refused ~= '' then
  held_tokens = tonumber(redis.call('HGET', KEYS[2], 'ht:' .. me) or '0')
  held_usd = tonumber(redis.call('HGET', KEYS[2], 'hu:' .. me) or '0')
end

local ok = refused == '' and '1' or '0'
return { ok, tostring(requests), tostring(tokens), tostring(held_tokens), tostring(held_usd),
  refused, tostring(wait), tostring(day_tokens), tostring(day_usd), tostring(month_tokens),
  tostring(month_usd), requests_level and tostring(requests_level - requests) or '',
  tokens_level and tostring(tokens_level - tokens) or '' }
