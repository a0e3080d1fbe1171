-- wrk script of the benchmark: send pre-signed raw requests from a file, each once.
--
--   wrk -t1 -c8 -d10s --timeout 10s --latency -s bench/wrk_requests.lua \
--       http://127.0.0.1:PORT -- /path/to/requests.bin
--
-- The file holds length-prefixed raw HTTP requests ("<len>\n<request>", see
-- bench/workload.py). Every request is sent at most once: when the file is used up
-- the thread stops and reports `exhausted` (the harness then redoes the round with
-- more requests). done() prints one JSON line prefixed with "BENCH_JSON ".

-- Globals, not locals: done() reads them through thread:get().
requests = {}
next_index = 0
exhausted = 0
responses = 0
ok = 0
statuses = {}
loaded_cpu = 0
threads = {}
fallback = nil

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local fh = assert(io.open(path, "rb"))
  local data = fh:read("*a")
  fh:close()
  local pos = 1
  local size = #data
  while pos <= size do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    requests[#requests + 1] = string.sub(data, nl + 1, nl + len)
    pos = nl + 1 + len
  end
  -- Sent only after the file is used up (never a replay); the round is discarded then.
  fallback = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
  loaded_cpu = os.clock()
end

function request()
  next_index = next_index + 1
  if next_index > #requests then
    if exhausted == 0 then
      exhausted = 1
      wrk.thread:stop()
    end
    return fallback
  end
  return requests[next_index]
end

function response(status, headers, body)
  responses = responses + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
  end
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests_stats)
  local total_ok, total_responses, total_sent, any_exhausted = 0, 0, 0, 0
  local loaded = 0
  local merged = {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_responses = total_responses + thread:get("responses")
    total_sent = total_sent + thread:get("next_index")
    loaded = math.max(loaded, thread:get("loaded_cpu"))
    if thread:get("exhausted") == 1 then
      any_exhausted = 1
    end
    local st = thread:get("statuses")
    for k, v in pairs(st) do
      merged[k] = (merged[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(merged) do
    parts[#parts + 1] = string.format('"%s": %d', k, v)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"tool": "wrk", "duration_s": %.6f, "requests": %d, "responses": %d, '
      .. '"ok": %d, "non_2xx": %d, "statuses": {%s}, "exhausted": %s, "sent_from_file": %d, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_ms": {"p50": %.4f, "p90": %.4f, "p99": %.4f, "max": %.4f, "mean": %.4f}, '
      .. '"loadgen_cpu_s": %.4f}\n',
    summary.duration / 1e6, summary.requests, total_responses, total_ok,
    total_responses - total_ok, table.concat(parts, ", "),
    any_exhausted == 1 and "true" or "false", total_sent,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
    os.clock() - loaded
  ))
end
