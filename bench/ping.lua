-- wrk script: POST fixed requests in turn and check every answer.
-- Arguments after `--`: expect ("ok" | "fault" | "accepted"), then pairs of path and body file.
-- "ok": HTTP 200 without <fault>; "fault": HTTP 200 with <fault>; "accepted": HTTP 202 (the sink).
-- done() prints one JSON line that run.py reads.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  expect = args[1]
  good, bad = 0, 0
  requests_ = {}
  local i = 2
  while args[i] do
    local file = assert(io.open(args[i + 1], "rb"))
    local body = file:read("*a")
    file:close()
    local content_type = "text/xml"
    if expect == "accepted" then content_type = "application/x-www-form-urlencoded" end
    table.insert(requests_, wrk.format("POST", args[i], { ["Content-Type"] = content_type }, body))
    i = i + 2
  end
  n = 0
end

function request()
  n = n % #requests_ + 1
  return requests_[n]
end

function response(status, headers, body)
  local ok
  if expect == "accepted" then
    ok = status == 202
  elseif status ~= 200 then
    ok = false
  elseif expect == "fault" then
    ok = body:find("<fault>", 1, true) ~= nil
  else
    ok = body:find("<fault>", 1, true) == nil
  end
  if ok then good = good + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local good_, bad_ = 0, 0
  for _, thread in ipairs(threads) do
    good_ = good_ + thread:get("good")
    bad_ = bad_ + thread:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "good": %d, "bad": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, good_, bad_, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
