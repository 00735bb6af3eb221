-- wrk script for bench/http/run.sh: POSTs one image file as the body of
-- every request and counts the answers that are not 200.
--
--   BENCH_IMAGE=photo.jpg [BENCH_CONTENT_TYPE=image/jpeg] wrk -s post.lua URL
--
-- wrk only counts statuses above 399 as errors (and prints them as
-- "Non-2xx or 3xx responses" only when there are some); a benchmark of an
-- inference route must also see a stray 3xx or 204, so done() reports every
-- status that is not 200, per status, on one line the runner parses:
--   maskd-bench requests=N duration_us=D non200=K statuses=503:3,504:1
--     connect=0 read=0 write=0 timeout=0 p50_us=.. p90_us=.. p99_us=..

local path = os.getenv("BENCH_IMAGE")
if not path or path == "" then
  error("post.lua: set BENCH_IMAGE to the image file to POST")
end
local file = assert(io.open(path, "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "image/jpeg"

-- Each wrk thread runs this file in its own Lua state; these globals are
-- per thread and done() (in the main state) collects them.
non200 = 0
statuses = {}

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local total, by_status = 0, {}
  for _, thread in ipairs(threads) do
    total = total + (thread:get("non200") or 0)
    for status, n in pairs(thread:get("statuses") or {}) do
      by_status[status] = (by_status[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(by_status) do
    table.insert(parts, string.format("%d:%d", status, n))
  end
  table.sort(parts)
  local e = summary.errors
  io.write(string.format(
    "maskd-bench requests=%d duration_us=%d non200=%d statuses=%s " ..
    "connect=%d read=%d write=%d timeout=%d p50_us=%d p90_us=%d p99_us=%d\n",
    summary.requests, summary.duration, total, #parts > 0 and table.concat(parts, ",") or "-",
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
