-- The second half of a grant of stock (see give.lua): the receiving bucket counts the coupons
-- given, once per grant id.
-- KEYS[1] meta hash, KEYS[2] ledger hash, of the receiving bucket
-- ARGV[1] grant id, ARGV[2] coupons
-- Returns 1 when it counted them, 0 when it had already, -1 when the bucket is missing or
-- holds no stock record (lost: the sync that rebuilds it counts the grant from the giver's
-- ledger).
if not redis.call('HGET', KEYS[1], 'capacity') then
  return -1
end
if redis.call('HSETNX', KEYS[2], 'in:' .. ARGV[1], ARGV[2]) == 0 then
  return 0
end
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'received')
redis.call('HSET', KEYS[1], 'capacity', tonumber(meta[1]) + tonumber(ARGV[2]),
  'received', tonumber(meta[2] or '0') + tonumber(ARGV[2]))
return 1
