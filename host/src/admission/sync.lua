-- Writes a campaign's capacity and window; rebuilds its state first when it is missing
-- (Redis restarted or was flushed), when it holds less than the database has issued (Redis
-- came back from an older snapshot), or when forced. Check and rebuild are one step, so that
-- hosts that found the same stale state rebuild it once.
-- KEYS[1] meta hash, KEYS[2] users hash, KEYS[3] queue stream
-- ARGV[1] force (1/0), ARGV[2] capacity, ARGV[3] opens_at, ARGV[4] closes_at ('' for none),
-- ARGV[5] issuer group, ARGV[6] n, then n pairs of (user id, position) holding a coupon.
-- Returns 1 when it rebuilt, else 0.
local n = tonumber(ARGV[6])
local last = 0
for i = 0, n - 1 do
  local position = tonumber(ARGV[8 + 2 * i])
  if position > last then last = position end
end
local rebuild = ARGV[1] == '1'
if not rebuild then
  local meta = redis.call('HMGET', KEYS[1], 'capacity', 'admitted', 'seq')
  rebuild = not meta[1] or tonumber(meta[2] or '0') < n or tonumber(meta[3] or '0') < last
end
local rebuilt = 0
if rebuild then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  for i = 0, n - 1 do
    redis.call('HSET', KEYS[2], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
  end
  redis.call('HSET', KEYS[1], 'admitted', n, 'seq', last)
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[5], '0', 'MKSTREAM')
  rebuilt = 1
end
redis.call('HSET', KEYS[1], 'capacity', ARGV[2], 'opens_at', ARGV[3], 'closes_at', ARGV[4])
return rebuilt
