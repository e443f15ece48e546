-- wrk script for perf/shared-hotpath.sh (Redis cost): request i names client i mod KEYS
-- (default 100000) in X-Forwarded-For, from 198.18.0.0/15, so KEYS distinct per-IP buckets
-- are active; header text only, the connection is loopback.
local keys = tonumber(os.getenv("KEYS") or "100000")
local i = -1

function request()
  i = (i + 1) % keys
  local n = i
  local xff = string.format("198.%d.%d.%d", 18 + math.floor(n / 65536), math.floor(n / 256) % 256, n % 256)
  return wrk.format("GET", wrk.path, { ["Host"] = "bench", ["X-Forwarded-For"] = xff })
end
