-- The operators' run-time changes (tiers, limits, pauses, drains, ejections), one
-- document for the cluster, replaced only by a replica that had seen its latest
-- version (compare and set); every replica is told the new version.
--
-- KEYS: 1 the operator hash (fields: version, overrides, keys_version).
-- ARGV: 1 the version the replica last saw, 2 the new document (JSON), 3 the channel.
-- Returns { "1", new version } or, when another replica changed it first,
--   { "0", version, document }.

local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then
  return { '0', tostring(version), redis.call('HGET', KEYS[1], 'overrides') or '' }
end
version = version + 1
redis.call('HSET', KEYS[1], 'version', version, 'overrides', ARGV[2])
redis.call('PUBLISH', ARGV[3], 'overrides ' .. version)
return { '1', tostring(version) }
