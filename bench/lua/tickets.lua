-- wrk script: every request is its own ticket, written by the harness (bench/load.py) to a file of
-- tab-separated lines: method, path, API token ("-": none), JSON body (may be empty).
--
--   wrk -t T -c C -d S -s tickets.lua URL -- <tickets file> <T> <once|cycle> <limit per thread> <key prefix|->
--
-- Thread i sends tickets i, i+T, i+2T, ... . "once" sends each ticket once and stops the thread when
-- its tickets are used up (writes: every request claims a fresh resource); "cycle" goes round them again
-- (reads). Either way a thread stops after <limit per thread> requests. With a key prefix every request
-- carries its own Idempotency-Key (<prefix>-<ticket number>).
-- done() prints one line, "BENCH {json}": requests, duration, latency percentiles (microseconds), the
-- count of every HTTP status, wrk's socket errors, and how many threads stopped early (their
-- tickets or their limit used up before the time: wrk still divides by the whole duration).

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  local path, thread_count, mode, key_prefix = args[1], tonumber(args[2]), args[3], args[5]
  limit = tonumber(args[4])
  cycle = mode == "cycle"
  prepared = {}
  local number = 0
  for line in io.lines(path) do
    if number % thread_count == id then
      local method, url, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {}
      if token ~= "-" then
        headers["Authorization"] = "Token " .. token
      end
      if body == "" then
        body = nil
      else
        headers["Content-Type"] = "application/json"
      end
      if key_prefix ~= "-" then
        headers["Idempotency-Key"] = key_prefix .. "-" .. number
      end
      prepared[#prepared + 1] = wrk.format(method, url, headers, body)
    end
    number = number + 1
  end
  sent = 0
  ran_out = 0
  statuses = {}
  -- What a stopping thread hands wrk for the connection it is writing to; its answer is never counted.
  parting = wrk.format("GET", "/api/health")
end

function request()
  if #prepared == 0 or sent >= limit or (not cycle and sent >= #prepared) then
    ran_out = 1
    wrk.thread:stop()
    return parting
  end
  sent = sent + 1
  return prepared[(sent - 1) % #prepared + 1]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts, stopped = {}, 0
  for _, thread in ipairs(threads) do
    stopped = stopped + thread:get("ran_out")
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"statuses": {%s}, "socket_errors": %d, "stopped_threads": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, table.concat(parts, ", "), e.connect + e.read + e.write + e.timeout, stopped
  ))
end
