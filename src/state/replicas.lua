-- A replica's heartbeat: it says it is alive (with what it tells about itself) and
-- learns who else is. Entries silent longer than ARGV[3] ms are removed.
--
-- KEYS: 1 the replicas hash (field: replica id, value: "<ms> <json>"), 2 the operator
--   hash (its versions are returned, so a replica that missed a message catches up).
-- ARGV: 1 replica id, 2 its JSON, 3 how long a silent entry is kept (ms).
-- Returns { now ms, overrides version, keys version, id, value, id, value, ... }.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2])
local keep = tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local versions = redis.call('HMGET', KEYS[2], 'version', 'keys_version')
local out = { tostring(now), versions[1] or '0', versions[2] or '0' }
for i = 1, #fields, 2 do
  local at = tonumber(string.match(fields[i + 1], '^(%d+)')) or 0
  if now - at > keep then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    table.insert(out, fields[i])
    table.insert(out, fields[i + 1])
  end
end
return out
