#!/usr/bin/env bash
# `gateway replay` speed: lines per second on one core for a typical access log (the shipped
# config's policies, 10 000 clients, 1 000 users on 30 % of the requests, ~1 000 req/s of
# decisions, the line shape the gateway writes), and its peak memory.
#
#   perf/replay-bench.sh                 # 2 000 000 lines, bench-ci build
#   LINES=5000000 BIN=target/release perf/replay-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${LINES:-2000000}
BIN=${BIN:-target/bench-ci}
CONFIG=${CONFIG:-config/gateway.yaml}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  profile=$(basename "$BIN"); [ "$profile" = release ] && flag=--release || flag="--profile $profile"
  cargo build $flag --locked -p gateway >&2
fi
work=$(mktemp -d /tmp/replay-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$LINES" >"$work/access.log" <<'PY'
import random, sys
random.seed(7)
n = int(sys.argv[1])
t = 1_765_000_000_000_000_000
out = sys.stdout
paths = ["/v1/documents", "/v1/documents/42", "/v1/auth/token", "/v1/documents/7/versions"]
for i in range(n):
    t += random.randint(1, 2_000_000)
    ip = "198.51.%d.%d" % (random.randint(0, 39), random.randint(1, 250))
    method = "POST" if random.random() < 0.1 else "GET"
    path = random.choice(paths)
    user = ',"user_id":"u-%d"' % random.randint(1, 1000) if random.random() < 0.3 else ""
    auth = "user" if user else "anonymous"
    out.write('{"timestamp":"2025-12-06T05:00:00.000000Z","level":"INFO","message":"access",'
              '"request_id":"%032x","method":"%s","path":"%s","route":"/v1/","status":200,'
              '"bytes_in":0,"bytes_out":335,"duration_ms":1.951,"upstream_ms":1.031,'
              '"peer":"10.0.0.5","client_ip":"%s","trust":"trusted"%s,"auth":"%s",'
              '"policy":"per-ip","policy_decision":"allowed","limit_at_ns":%d,'
              '"user_agent":"Mozilla/5.0","protocol":"HTTP/1.1","target":"access_log"}\n'
              % (random.getrandbits(128), method, path, ip, user, auth, t))
PY
size=$(du -m "$work/access.log" | cut -f1)
start=$(date +%s.%N)
taskset -c 0 /usr/bin/time -f '%M' -o "$work/rss" "$BIN/gateway" replay --json --config "$CONFIG" "$work/access.log" >"$work/report.json"
end=$(date +%s.%N)
python3 - "$LINES" "$start" "$end" "$(cat "$work/rss")" "$size" "$work/report.json" <<'PY'
import json, sys
n, start, end, rss, size, report = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
r = json.load(open(report))
secs = end - start
print(f"{n} lines ({size} MiB) in {secs:.2f} s on one core: {n / secs:,.0f} lines/s; peak RSS {rss / 1024:.1f} MiB")
print(f"replayed {r['replayed']}, skipped {r['skipped']}, garbled {r['garbled']}; " +
      ", ".join(f"{p['policy']}: {p['would_refuse']} refused, {p['would_flag']} flagged" for p in r['policies']))
PY
