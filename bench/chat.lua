-- wrk script: POST a chat completion. CHAT_UNIQUE=1 makes every request a distinct prompt
-- (cache misses); CHAT_KEYS=N picks one of N stored prompts at random (hits spread over a
-- store that bench/run.py filled); otherwise every request is the same (hits on one key).
-- CHAT_STREAM=1 asks for "stream": true; CHAT_HEADERS="k: v\nk2: v2" adds headers to every
-- request (a peer that routes by header). Prints one JSON line.
local unique = os.getenv("CHAT_UNIQUE") == "1"
local keys = tonumber(os.getenv("CHAT_KEYS") or "0")
local stream = os.getenv("CHAT_STREAM") == "1"
local run = os.getenv("CHAT_RUN") or "0"
local prefix = '{"model":"gpt-bench","stream":' .. (stream and "true" or "false")
  .. ',"messages":[{"role":"user","content":"benchmark prompt '
local suffix = '"}]}'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("CHAT_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
  if name then
    wrk.headers[name] = value
  end
end
wrk.body = prefix .. "fixed" .. suffix

local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

local counter = 0
function request()
  if keys > 0 then
    return wrk.format(nil, nil, nil, '{"model":"gpt-bench","stream":false,"messages":[{"role":'
      .. '"user","content":"stored prompt ' .. math.random(0, keys - 1) .. '"}]}')
  end
  if not unique then
    return wrk.format(nil, nil, nil, wrk.body)
  end
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. run .. "-" .. tid .. "-" .. counter .. suffix)
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  -- the latency histogram as [microseconds, count] pairs, so runs can be pooled
  local hist = {}
  for i = 1, #latency do
    local value, count = latency(i)
    hist[#hist + 1] = string.format("[%d,%d]", value, count)
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,'
    .. '"hist":[%s]}\n',
    summary.requests, summary.duration, errors, latency:percentile(50),
    latency:percentile(99), latency.mean, table.concat(hist, ",")))
end
