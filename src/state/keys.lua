-- A key made, revoked or rotated at run time, for every replica: the record (a
-- digest, never the key) by its id; every replica is told which one changed.
--
-- KEYS: 1 the keys hash (field: key id, value: the record as JSON), 2 the operator hash.
-- ARGV: 1 the key id, 2 the record, 3 the channel.
-- Returns the new keys version.

redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local version = redis.call('HINCRBY', KEYS[2], 'keys_version', 1)
redis.call('PUBLISH', ARGV[3], 'key ' .. ARGV[1])
return tostring(version)
