-- Writes one bucket of a campaign (the whole campaign when it has one bucket): its window and
-- stock, after bringing its state up to the database's coupons when it must be:
-- - missing (Redis restarted without persistence, or was flushed), its queue stream gone, or
--   forced: rebuilt from the coupons (queued requests are gone with the stream);
-- - behind, holding less than the database issued (Redis came back from an older snapshot,
--   or a lagging replica was promoted): merged, each holder it does not know added and the
--   counters raised, so that the requests it still queues keep their place.
-- Check and change are one step, so that hosts that found the same state change it once.
-- KEYS[1] meta hash, KEYS[2] users hash, KEYS[3] queue stream, KEYS[4] ledger hash: the grants
-- of stock between buckets, 'in:<id>' and 'out:<id>' -> coupons (see give.lua).
-- ARGV[1] force (1/0), ARGV[2] the bucket's share of the capacity, ARGV[3] opens_at,
-- ARGV[4] closes_at ('' for none), ARGV[5] issuer group, ARGV[6] buckets, ARGV[7] bucket,
-- ARGV[8] the campaign's capacity, ARGV[9] n, then n pairs of (user id, position) holding a
-- coupon from this bucket; then m, then m pairs of (ledger field, coupons): grants that the other buckets' ledgers show this
-- bucket took part in, counted here if they are not yet (a host died between the two halves
-- of a grant, or this bucket lost its data).
-- The bucket's stock ('capacity') is its share plus the grants it received less those it gave.
-- Returns 1 when it rebuilt, 2 when it merged, 3 when the campaign's bucket count changed
-- while it held admissions (nothing written), else 0.
local buckets, bucket = tonumber(ARGV[6]), tonumber(ARGV[7])
local n = tonumber(ARGV[9])
local last = 0
for i = 0, n - 1 do
  local position = tonumber(ARGV[11 + 2 * i])
  local seq = math.floor((position - bucket - 1) / buckets) + 1
  if seq > last then last = seq end
end
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'admitted', 'seq', 'buckets')
if meta[1] and tonumber(meta[4] or '1') ~= buckets and tonumber(meta[2] or '0') > 0 then
  return 3
end
local changed = 0
if ARGV[1] == '1' or not meta[1] or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  for i = 0, n - 1 do
    redis.call('HSET', KEYS[2], ARGV[10 + 2 * i], ARGV[11 + 2 * i])
  end
  redis.call('HSET', KEYS[1], 'admitted', n, 'seq', last)
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[5], '0', 'MKSTREAM')
  changed = 1
elseif tonumber(meta[2] or '0') < n or tonumber(meta[3] or '0') < last then
  local added = 0
  for i = 0, n - 1 do
    added = added + redis.call('HSETNX', KEYS[2], ARGV[10 + 2 * i], ARGV[11 + 2 * i])
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
-- Grants: this ledger first (it survives a rebuild of the bucket's queue), then those the
-- other buckets know of.
local received, given = 0, 0
local ledger = redis.call('HGETALL', KEYS[4])
for i = 1, #ledger, 2 do
  if string.sub(ledger[i], 1, 3) == 'in:' then
    received = received + tonumber(ledger[i + 1])
  else
    given = given + tonumber(ledger[i + 1])
  end
end
local m = tonumber(ARGV[10 + 2 * n])
for i = 0, m - 1 do
  local field, coupons = ARGV[11 + 2 * n + 2 * i], ARGV[12 + 2 * n + 2 * i]
  if redis.call('HSETNX', KEYS[4], field, coupons) == 1 then
    if string.sub(field, 1, 3) == 'in:' then
      received = received + tonumber(coupons)
    else
      given = given + tonumber(coupons)
    end
  end
end
redis.call('HSET', KEYS[1], 'capacity', tonumber(ARGV[2]) + received - given,
  'received', received, 'given', given, 'buckets', buckets, 'total', ARGV[8],
  'opens_at', ARGV[3], 'closes_at', ARGV[4])
return changed
