-- Admits one request to a campaign, atomically.
-- KEYS[1] meta hash (capacity, opens_at, closes_at, admitted, seq)
-- KEYS[2] users hash (user id -> position)
-- KEYS[3] queue stream
-- ARGV[1] user id, ARGV[2] now (epoch ms), ARGV[3] request id,
-- ARGV[4] the floor's issued count, ARGV[5] the floor's highest issued position: the database
-- has seen that much; a state holding less went back in time (an older snapshot) and must be
-- rebuilt before it hands out positions other users hold.
-- Returns {outcome, position}.
local meta = redis.call('HMGET', KEYS[1], 'capacity', 'opens_at', 'closes_at', 'admitted', 'seq')
if not meta[1] then
  return {'unknown', 0}
end
if tonumber(meta[4] or '0') < tonumber(ARGV[4]) or tonumber(meta[5] or '0') < tonumber(ARGV[5]) then
  return {'behind', 0}
end
local now = tonumber(ARGV[2])
if meta[2] and meta[2] ~= '' and now < tonumber(meta[2]) then
  return {'not_open', 0}
end
if meta[3] and meta[3] ~= '' and now >= tonumber(meta[3]) then
  return {'closed', 0}
end
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then
  return {'duplicate', tonumber(existing)}
end
if tonumber(meta[4] or '0') >= tonumber(meta[1]) then
  return {'sold_out', 0}
end
redis.call('HINCRBY', KEYS[1], 'admitted', 1)
local position = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[2], ARGV[1], position)
redis.call('XADD', KEYS[3], '*', 'u', ARGV[1], 'p', position, 'r', ARGV[3], 't', ARGV[2])
return {'admitted', position}
