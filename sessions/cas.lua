-- Compare-and-set of a session record on its version.
-- KEYS[1]: the session key. ARGV[1]: expected version. ARGV[2]: new record. ARGV[3]: TTL in ms.
-- A record is one format byte (2), then its version as 20 decimal digits, then binary fields.
-- Returns 1 when written, 0 when the stored version differs, -1 when the key is absent,
-- -2 when the stored record cannot be read.
local cur = redis.call('GET', KEYS[1])
if not cur then
  return -1
end
local v = tonumber(string.sub(cur, 2, 21))
if string.byte(cur, 1) ~= 2 or string.len(cur) < 21 or not v then
  return -2
end
if v ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
