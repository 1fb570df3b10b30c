-- wrk script of the headline benchmark (bench/headline.sh): POST /api/v1/campaigns/{id}/requests
-- with distinct users. Request n (counted over all threads) comes from user (n * 7919) mod USERS:
-- 7919 is prime and does not divide USERS, so every user sends REQUESTS / USERS requests, spread
-- across the run. Each thread stops after its share of answers; the answers are counted by status.
-- Arguments: campaign id, requests, users, wrk's thread count.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  campaign = args[1]
  requests = tonumber(args[2])
  users = tonumber(args[3])
  nthreads = tonumber(args[4])
  share = math.floor(requests / nthreads)
  sent, answered = 0, 0
  s202, s409, s410, other = 0, 0, 0, 0
  path = "/api/v1/campaigns/" .. campaign .. "/requests"
  headers = { ["Content-Type"] = "application/json" }
end

function request()
  local n = id + sent * nthreads
  sent = sent + 1
  local user = (n * 7919) % users
  return wrk.format("POST", path, headers, '{"user_id":"u' .. user .. '"}')
end

function response(status, headers, body)
  answered = answered + 1
  if status == 202 then
    s202 = s202 + 1
  elseif status == 409 then
    s409 = s409 + 1
  elseif status == 410 then
    s410 = s410 + 1
  else
    other = other + 1
  end
  if answered >= share then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local c = { s202 = 0, s409 = 0, s410 = 0, other = 0, answered = 0 }
  for _, t in ipairs(threads) do
    for k, _ in pairs(c) do
      c[k] = c[k] + t:get(k)
    end
  end
  io.write(string.format(
    "RESULT answered=%d s202=%d s409=%d s410=%d other=%d seconds=%.3f " ..
    "p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f max_ms=%.2f\n",
    c.answered, c.s202, c.s409, c.s410, c.other, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency:percentile(99.9) / 1e3, latency.max / 1e3))
end
