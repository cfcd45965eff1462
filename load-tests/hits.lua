-- wrk script: every request takes a random tracking path from PATHS_FILE
-- (one path a line) and a user agent from a realistic mix, so the server
-- sees many distinct tokens and user agents, not one URL.
--
-- Environment: PATHS_FILE (required), RATE (optional: pace the connections
-- with a DELAY_MS pause, default 1, after each response; the caller sizes
-- the connection count to reach the rate), UNIQUE_UA=1 to make every user
-- agent distinct (soak).

local paths = {}
local user_agents = {
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
  "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17029; Pro)",
  "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
  "Mozilla/5.0",
  "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
  "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
  "python-requests/2.31.0",
  "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
}
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

local rate = tonumber(os.getenv("RATE") or "")
-- With RATE: the pause in milliseconds between a response and the next
-- request on a connection; load-tests/run sizes the connection count.
local pause = tonumber(os.getenv("DELAY_MS") or "1")

function delay()
  if rate then
    return pause
  end
  return 0
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
