-- Writes a campaign's capacity and window; rebuilds its state first when it is missing
-- (Redis restarted or was flushed) or when forced.
-- KEYS[1] meta hash, KEYS[2] users hash, KEYS[3] queue stream
-- ARGV[1] force (1/0), ARGV[2] capacity, ARGV[3] opens_at, ARGV[4] closes_at ('' for none),
-- ARGV[5] issuer group, ARGV[6] n, then n pairs of (user id, position) holding a coupon.
-- Returns 1 when it rebuilt, else 0.
local rebuilt = 0
if ARGV[1] == '1' or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  local n = tonumber(ARGV[6])
  local seq = 0
  for i = 0, n - 1 do
    local position = tonumber(ARGV[8 + 2 * i])
    redis.call('HSET', KEYS[2], ARGV[7 + 2 * i], position)
    if position > seq then seq = position end
  end
  redis.call('HSET', KEYS[1], 'admitted', n, 'seq', seq)
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[5], '0', 'MKSTREAM')
  rebuilt = 1
end
redis.call('HSET', KEYS[1], 'capacity', ARGV[2], 'opens_at', ARGV[3], 'closes_at', ARGV[4])
return rebuilt
