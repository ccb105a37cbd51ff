-- A replica's heartbeat: it says it is alive (with what it tells about itself) and
-- learns who else is. Entries silent longer than ARGV[3] ms are removed.
--
-- KEYS: 1 the replicas hash (field: replica id, value: "<ms> <json>").
-- ARGV: 1 replica id, 2 its JSON, 3 how long a silent entry is kept (ms).
-- Returns { now ms, id, value, id, value, ... }.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2])
local keep = tonumber(ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local out = { tostring(now) }
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
