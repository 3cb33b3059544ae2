-- wrk script: each connection is one rater who asks for a pair (POST /api/rate/next) and
-- labels it (POST /api/rate/labels), over and over. With LABEL_NEXT=1 a label also asks for
-- the next pair ("next": true), as the browser's rater page does: one request per label after
-- the first. One connection per thread, so request() and response() alternate strictly within
-- a thread. Tokens come from RATER_TOKENS (a file, one token per line); done() prints the
-- label count and the error count.

local tokens = {}
local threads = {}
local counter = 1

function setup(thread)
  if #tokens == 0 then
    for line in io.lines(os.getenv("RATER_TOKENS")) do tokens[#tokens + 1] = line end
  end
  thread:set("token", tokens[counter])
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local pair = nil
local with_next = os.getenv("LABEL_NEXT") == "1"
local next_field = with_next and ',"next":true' or ''
labels = 0
errors = 0
nothing = 0

function request()
  if not token then return wrk.format("GET", "/api/health") end -- wrk's own probe in the main thread
  local headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
  if pair then
    local body = '{"pair":"' .. pair .. '","choice":"left","time_ms":1000' .. next_field .. '}'
    return wrk.format("POST", "/api/rate/labels", headers, body)
  end
  return wrk.format("POST", "/api/rate/next", headers, "")
end

function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    pair = nil
    return
  end
  if pair then
    labels = labels + 1
    pair = nil
    if with_next then
      pair = string.match(body, '"next":{"assignment":{"pair":"([0-9a-f]+)"')
      if not pair then nothing = nothing + 1 end
    end
  else
    pair = string.match(body, '"pair":"([0-9a-f]+)"')
    if not pair then nothing = nothing + 1 end
  end
end

function done(summary, latency, requests)
  local l, e, n = 0, 0, 0
  for _, t in ipairs(threads) do
    l = l + t:get("labels")
    e = e + t:get("errors")
    n = n + t:get("nothing")
  end
  local secs = summary.duration / 1e6
  io.write(string.format("labels: %d in %.1f s = %.1f labels/s (%d requests, %.1f req/s); errors %d; empty pool %d\n",
    l, secs, l / secs, summary.requests, summary.requests / secs, e, n))
  io.write(string.format("latency per request (next and label alike): p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
