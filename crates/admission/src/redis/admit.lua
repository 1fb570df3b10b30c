-- Admits a batch of requests to one bucket of a campaign (the whole campaign when it has one
-- bucket), atomically and in the order given.
-- KEYS[1] meta hash (capacity, opens_at, closes_at, admitted, seq)
-- KEYS[2] users hash (user id -> position)
-- KEYS[3] queue stream
-- ARGV[1] the floor's issued count, ARGV[2] the floor's highest issued seq, of this bucket:
-- the database has seen that much; a state holding less went back in time (an older
-- snapshot) and must be rebuilt before it hands out positions other users hold.
-- ARGV[3] buckets, ARGV[4] this bucket (0-based): the bucket's n-th admission is at position
-- (n - 1) * buckets + bucket + 1, so the buckets' positions never collide.
-- ARGV[5] coupons the whole campaign issued (the database's count over every bucket): once it
-- reaches the campaign's capacity ('total'), nobody new is admitted, whatever this bucket's
-- stock says (it may have come back from an older snapshot with stock it had given away).
-- Then three arguments per request: user id, now (epoch ms), request id.
-- Returns {'unknown'} or {'behind'} for the whole batch, else {outcome, position, ...}: one
-- pair per request, in order. A batch that admits nobody but finds someone already admitted
-- still writes (meta's `touched`), for the WAIT that may follow it.
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'opens_at', 'closes_at', 'admitted', 'seq',
  'total', 'buckets')
-- Unknown too when the bucket was written for another bucket count than the caller's: the
-- caller syncs the campaign first (and is refused if the count changed under admissions).
if not meta[1] or (meta[7] and tonumber(meta[7]) ~= tonumber(ARGV[3])) then
  return {'unknown'}
end
local capacity = tonumber(meta[1])
local exhausted = meta[6] and tonumber(ARGV[5]) >= tonumber(meta[6])
local admitted = tonumber(meta[4] or '0')
local seq = tonumber(meta[5] or '0')
if admitted < tonumber(ARGV[1]) or seq < tonumber(ARGV[2]) then
  return {'behind'}
end
local buckets, bucket = tonumber(ARGV[3]), tonumber(ARGV[4])
local opens = (meta[2] and meta[2] ~= '') and tonumber(meta[2]) or nil
local closes = (meta[3] and meta[3] ~= '') and tonumber(meta[3]) or nil
local out = {}
local changed = false
local found = false
for i = 6, #ARGV, 3 do
  local user, now, request = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if opens and now < opens then
    out[#out + 1] = 'not_open'; out[#out + 1] = 0
  elseif closes and now >= closes then
    out[#out + 1] = 'closed'; out[#out + 1] = 0
  else
    local existing = redis.call('HGET', KEYS[2], user)
    if existing then
      found = true
      out[#out + 1] = 'duplicate'; out[#out + 1] = tonumber(existing)
    elseif admitted >= capacity or exhausted then
      out[#out + 1] = 'sold_out'; out[#out + 1] = 0
    else
      admitted = admitted + 1
      seq = seq + 1
      changed = true
      local position = (seq - 1) * buckets + bucket + 1
      redis.call('HSET', KEYS[2], user, position)
      redis.call('XADD', KEYS[3], '*', 'u', user, 'p', position, 'r', request, 't', now)
      out[#out + 1] = 'admitted'; out[#out + 1] = position
    end
  end
end
if changed then
  redis.call('HSET', KEYS[1], 'admitted', admitted, 'seq', seq)
elseif found then
  -- A write of this call, so that a WAIT behind it covers the earlier admission of the user it
  -- answers 409 (made by any connection: the replication stream is in order).
  redis.call('HINCRBY', KEYS[1], 'touched', 1)
end
return out
