-- wrk script for perf/bench.sh: each request names one of 1000 clients in
-- X-Forwarded-For (198.18.0.0/15, header text only) and carries the bench's bearer
-- token (BENCH_TOKEN), so per-IP and per-user limits see realistic keys. NO_XFF=1: no
-- X-Forwarded-For (clients connected directly, as the shipped config, which trusts no proxy, expects).
local reqs = {}
local i = 0

function init(args)
  local token = os.getenv("BENCH_TOKEN")
  for n = 0, 999 do
    local headers = {}
    headers["Host"] = wrk.headers["Host"]
    if os.getenv("NO_XFF") ~= "1" then
      headers["X-Forwarded-For"] = string.format("198.18.%d.%d", math.floor(n / 250), n % 250 + 1)
    end
    if token and token ~= "" then
      headers["Authorization"] = "Bearer " .. token
    end
    reqs[n + 1] = wrk.format("GET", wrk.path, headers)
  end
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
