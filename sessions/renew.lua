-- Extends a session lock if the caller still owns it.
-- KEYS[1]: the lock key. ARGV[1]: the owner token. ARGV[2]: the new TTL in ms.
-- Returns 1 when extended, 0 when the lock is absent or owned by another.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
