-- Deletes a session lock if the caller still owns it.
-- KEYS[1]: the lock key. ARGV[1]: the owner token.
-- Returns 1 when deleted, 0 when the lock is absent or owned by another.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
