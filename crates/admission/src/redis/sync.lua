-- Writes a campaign's capacity and window, after bringing its state up to the database's
-- coupons when it must be:
-- - missing (Redis restarted without persistence, or was flushed), its queue stream gone, or
--   forced: rebuilt from the coupons (queued requests are gone with the stream);
-- - behind, holding less than the database issued (Redis came back from an older snapshot,
--   or a lagging replica was promoted): merged, each holder it does not know added and the
--   counters raised, so that the requests it still queues keep their place.
-- Check and change are one step, so that hosts that found the same state change it once.
-- KEYS[1] meta hash, KEYS[2] users hash, KEYS[3] queue stream
-- ARGV[1] force (1/0), ARGV[2] capacity, ARGV[3] opens_at, ARGV[4] closes_at ('' for none),
-- ARGV[5] issuer group, ARGV[6] n, then n pairs of (user id, position) holding a coupon.
-- Returns 1 when it rebuilt, 2 when it merged, else 0.
local n = tonumber(ARGV[6])
local last = 0
for i = 0, n - 1 do
  local position = tonumber(ARGV[8 + 2 * i])
  if position > last then last = position end
end
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'admitted', 'seq')
local changed = 0
if ARGV[1] == '1' or not meta[1] or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  for i = 0, n - 1 do
    redis.call('HSET', KEYS[2], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
  end
  redis.call('HSET', KEYS[1], 'admitted', n, 'seq', last)
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[5], '0', 'MKSTREAM')
  changed = 1
elseif tonumber(meta[2] or '0') < n or tonumber(meta[3] or '0') < last then
  local added = 0
  for i = 0, n - 1 do
    added = added + redis.call('HSETNX', KEYS[2], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
  end
  local admitted = tonumber(meta[2] or '0') + added
  if admitted < n then admitted = n end
  local seq = tonumber(meta[3] or '0')
  if seq < last then seq = last end
  redis.call('HSET', KEYS[1], 'admitted', admitted, 'seq', seq)
  changed = 2
end
-- The stream may be there without the issuers' group (restored from a snapshot taken before
-- the group existed): create it, reading from the start.
if changed ~= 1 then
  local created = redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[5], '0')
  if type(created) == 'table' and created.ok then changed = math.max(changed, 2) end
end
redis.call('HSET', KEYS[1], 'capacity', ARGV[2], 'opens_at', ARGV[3], 'closes_at', ARGV[4])
return changed
