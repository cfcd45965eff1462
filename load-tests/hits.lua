-- wrk script: every request takes a random tracking path from PATHS_FILE
-- (one path a line) and a user agent from a realistic mix, so the server
-- sees many distinct tokens and user agents, not one URL.
--
-- Environment: PATHS_FILE (required), USER_AGENTS_FILE (default
-- load-tests/user-agents.txt), UNIQUE_UA=1 to make every user agent distinct
-- (soak), LIMIT to stop after that many responses. wrk runs closed-loop at
-- full load; the runs at a set rate use load-tests/pace.

local paths = {}
-- The mix of user agents, one a line: shared with load-tests/pace.
local user_agents = {}
for line in io.lines(os.getenv("USER_AGENTS_FILE") or "load-tests/user-agents.txt") do
  if line ~= "" then user_agents[#user_agents + 1] = line end
end
local counter = 0
local unique_ua = os.getenv("UNIQUE_UA") == "1"
-- Stop after this many responses (one wrk thread): the soak's request count.
local limit = tonumber(os.getenv("LIMIT") or "")
local responses = 0

function response(status, headers, body)
  responses = responses + 1
  if limit and responses >= limit then
    wrk.thread:stop()
  end
end

function init(args)
  local file = assert(os.getenv("PATHS_FILE"), "set PATHS_FILE")
  for line in io.lines(file) do
    paths[#paths + 1] = line
  end
  assert(#paths > 0, "no paths in " .. file)
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8), 16) or 0))
end

function request()
  counter = counter + 1
  local path
  local ua
  if unique_ua then
    path = paths[(counter - 1) % #paths + 1]
    ua = user_agents[counter % #user_agents + 1] .. " soak/" .. counter
  else
    path = paths[math.random(#paths)]
    ua = user_agents[math.random(#user_agents)]
  end
  return wrk.format("GET", path, { ["User-Agent"] = ua })
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, secs, summary.requests / secs, errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
