-- The first half of a grant of stock between two buckets of a campaign: the giving bucket
-- takes coupons off its stock and records the grant in its ledger. The receiving bucket then
-- counts it by the same id (receive.lua); a host that dies between the two leaves the grant in
-- this ledger, and the next sync of the campaign counts it in the receiver (sync.lua). Stock
-- therefore only moves, never appears: the buckets' stock and the grants in flight add up to
-- the campaign's capacity.
-- KEYS[1] meta hash, KEYS[2] ledger hash, of the giving bucket
-- ARGV[1] grant id ('<from>><to>:<unique>'), ARGV[2] coupons wanted, ARGV[3] '1': no more
-- than wanted (a sync covering a bucket's deficit)
-- Gives what it can spare up to the larger of the wish and half its spare stock (a bucket that
-- sold out is likely to ask again soon), at least one when it has any. Returns the coupons
-- given (0: none to spare, or the bucket is missing); the same id again returns the same.
local done = redis.call('HGET', KEYS[2], 'out:' .. ARGV[1])
if done then
  return tonumber(done)
end
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'admitted', 'given')
if not meta[1] then
  return 0
end
local spare = tonumber(meta[1]) - tonumber(meta[2] or '0')
if spare <= 0 then
  return 0
end
local coupons = tonumber(ARGV[2])
if ARGV[3] ~= '1' then coupons = math.max(coupons, math.floor(spare / 2)) end
if coupons > spare then coupons = spare end
redis.call('HSET', KEYS[2], 'out:' .. ARGV[1], coupons)
redis.call('HSET', KEYS[1], 'capacity', tonumber(meta[1]) - coupons,
  'given', tonumber(meta[3] or '0') + coupons)
return coupons
