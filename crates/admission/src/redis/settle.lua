-- After a chunk committed: makes sure the campaign's state knows its holders. A chunk claimed
-- before Redis lost its data and committed after the rebuild holds users the rebuilt state
-- never saw; without them a holder would be admitted again at a new position and the
-- admitted count would fall short of what the database holds.
-- KEYS[1] meta hash, KEYS[2] users hash, of the bucket that handed out the positions
-- ARGV[1] buckets, ARGV[2] this bucket; then pairs of (user id, position) that now hold a
-- coupon, each handed out by this bucket (its seq is (position - bucket - 1) / buckets + 1).
-- Returns how many holders it added (0 when the state is missing: the next rebuild reads
-- them from the database).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local buckets, bucket = tonumber(ARGV[1]), tonumber(ARGV[2])
local added = 0
local last = 0
for i = 3, #ARGV, 2 do
  local position = tonumber(ARGV[i + 1])
  if redis.call('HSETNX', KEYS[2], ARGV[i], position) == 1 then
    added = added + 1
  end
  local seq = math.floor((position - bucket - 1) / buckets) + 1
  if seq > last then last = seq end
end
if added > 0 then
  redis.call('HINCRBY', KEYS[1], 'admitted', added)
end
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') < last then
  redis.call('HSET', KEYS[1], 'seq', last)
end
return added
