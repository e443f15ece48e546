#!/usr/bin/env bash
# Side-by-side benchmark: the same backend measured direct, behind our gateway (every
# feature on), behind nginx and behind HAProxy, in one run. See perf/README.md.
#
#   perf/bench.sh                 # full run (~6 min): REPS=3, DURATION=8s, LAT_DURATION=5s
#   REPS=1 DURATION=3 LAT_DURATION=2 perf/bench.sh   # quick look
#   LATENCY=0 perf/bench.sh       # closed loop only (req/s, CPU per request; no oha needed)
#   WORKERS=2 PROXY_CPU=0,1 LOAD_CPU=0,1 perf/bench.sh   # 2 workers each (threads: 2,
#                                 # worker_processes 2, nbthread 2), everything on both cores
#
# Layout: every proxy pinned to CPU $PROXY_CPU with taskset, backend and load generators
# pinned to CPU $LOAD_CPU. One worker each. Access logs of all three proxies go to files
# in the run directory (one JSON line per request, counted at the end).
# Output: a markdown table on stdout and in $OUT/bench-<timestamp>.md, raw samples in
# $OUT/bench-<timestamp>.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-8}          # seconds per closed-loop (max req/s) sample
LAT_DURATION=${LAT_DURATION:-5}  # seconds per open-loop (latency) sample
CONNS=${CONNS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-perf/out}
BIN=${BIN:-target/release}
SYSTEMS=${SYSTEMS:-"direct gateway nginx haproxy"}
WORKERS=${WORKERS:-1}            # worker threads/processes of each proxy
LATENCY=${LATENCY:-1}            # 0: skip the open-loop latency samples

BACKEND_PORT=24081 GATEWAY_PORT=24080 NGINX_PORT=24082 HAPROXY_PORT=24083 ADMIN_PORT=24901
PATH_UNDER_TEST=/v1/documents

. perf/lib-bench.sh
tools="nginx haproxy wrk taskset python3 curl"
[ "$LATENCY" = 0 ] || tools="$tools oha"
# shellcheck disable=SC2086
bench_setup bench $tools
trap bench_cleanup EXIT

port_of() {
  case $1 in
    direct) echo $BACKEND_PORT ;; gateway) echo $GATEWAY_PORT ;;
    nginx) echo $NGINX_PORT ;; haproxy) echo $HAPROXY_PORT ;;
  esac
}

# --- start everything -----------------------------------------------------------------
start_backend
start_gateway
start_nginx

sed -e "s#@RUN@#$RUN#g" -e "s#@LISTEN@#127.0.0.1:$HAPROXY_PORT#g" \
  -e "s#@BACKEND@#127.0.0.1:$BACKEND_PORT#g" -e "s#^  nbthread 1#  nbthread $WORKERS#" perf/haproxy.cfg >"$RUN/haproxy.cfg"
haproxy -c -q -f "$RUN/haproxy.cfg" >&2
taskset -c "$PROXY_CPU" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy-access.log" 2>"$RUN/haproxy.err" &
started haproxy $!

for s in $SYSTEMS; do wait_port "$(port_of "$s")"; done
sleep 1

# Every system must answer 200 with the bench headers before we time anything.
for s in $SYSTEMS; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "x-forwarded-for: 198.18.0.1" \
    -H "authorization: Bearer $BENCH_TOKEN" "http://127.0.0.1:$(port_of "$s")$PATH_UNDER_TEST")
  [ "$code" = 200 ] || { echo "bench.sh: $s answered $code" >&2; exit 1; }
done

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
record all load_before "$(cut -d' ' -f1 /proc/loadavg)"
record all workers "$WORKERS"

# --- closed loop: max req/s and CPU per request -----------------------------------------
wrk_run() { # system duration -> prints "requests errors"
  local url out
  url="http://127.0.0.1:$(port_of "$1")$PATH_UNDER_TEST"
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$2s" -s perf/wrk-xff.lua "$url")
  local n err
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  err=$(echo "$out" | awk '/Non-2xx/ {print $NF} /Socket errors/ {print 1}' | head -1)
  echo "$n ${err:-0}"
}

for s in $SYSTEMS; do wrk_run "$s" 2 >/dev/null; done # warm up pools and caches
for rep in $(seq 1 "$REPS"); do
  for s in $SYSTEMS; do
    read -r -a pids <<<"$(system_pids "$s")"
    t0=$(cpu_ticks "${pids[@]}")
    read -r n errs <<<"$(wrk_run "$s" "$DURATION")"
    t1=$(cpu_ticks "${pids[@]}")
    [ "$errs" = 0 ] || { echo "bench.sh: $s had $errs non-2xx or socket errors" >&2; exit 1; }
    rps=$(python3 -c "print(round($n / $DURATION))")
    us=$(python3 -c "print(round(($t1 - $t0) * 1e6 / $CLK_TCK / $n, 2))")
    util=$(python3 -c "print(round(($t1 - $t0) * 100 / $CLK_TCK / $DURATION))")
    record "$s" max_rps "$rps"
    record "$s" cpu_us_per_req "$us"
    record "$s" cpu_util_pct "$util"
    echo "rep $rep $s: $rps req/s, $us us CPU/req, ${util}% of a core" >&2
  done
done

# --- open loop: latency at 25/50/75 % of the slowest proxy's max ------------------------
slowest=$(python3 - "$TSV" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = {}
for s, m, v in rows:
    if m == "max_rps" and s != "direct":
        by.setdefault(s, []).append(float(v))
print(round(min(statistics.median(v) for v in by.values())) if by else 1000)
EOF
)
record all slowest_max "$slowest"
for rep in $(seq 1 "$REPS"); do
  [ "$LATENCY" = 0 ] && break
  for pct in 25 50 75; do
    rate=$((slowest * pct / 100))
    for s in $SYSTEMS; do
      json=$(taskset -c "$LOAD_CPU" oha --no-tui --output-format json -z "${LAT_DURATION}s" \
        -q "$rate" --latency-correction -c "$CONNS" \
        -H "x-forwarded-for: 198.18.0.1" -H "authorization: Bearer $BENCH_TOKEN" \
        "http://127.0.0.1:$(port_of "$s")$PATH_UNDER_TEST")
      read -r p50 p99 ok <<<"$(echo "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
lp = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
# Requests still in flight when the run ends are cut off by oha, not failed by the proxy.
errs = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
bad = sum(v for k, v in codes.items() if k != "200") + sum(errs.values())
print(round(lp["p50"] * 1e3, 3), round(lp["p99"] * 1e3, 3), bad)')"
      if [ "$ok" != 0 ]; then
        echo "bench.sh: WARNING $s had $ok failed requests at $rate req/s" >&2
      fi
      record "$s" "failed_at_$pct" "$ok"
      record "$s" "p50_ms_at_$pct" "$p50"
      record "$s" "p99_ms_at_$pct" "$p99"
      echo "rep $rep $s @ $rate req/s ($pct %): p50 $p50 ms, p99 $p99 ms" >&2
    done
  done
done

# --- peak memory, sanity checks ---------------------------------------------------------
record_peak_rss
curl -s "127.0.0.1:$ADMIN_PORT/metrics" >"$RUN/gateway-metrics.txt"
for s in gateway nginx haproxy; do
  lines=$(grep -c '"status":200' "$RUN/$s-access.log" || true)
  echo "# $s access-log lines with status 200: $lines" >&2
  record "$s" access_log_lines "$lines"
done
grep -E '^gateway_rate_limit_decisions_total|^http_requests_total' "$RUN/gateway-metrics.txt" >&2 || true
record all load_after "$(cut -d' ' -f1 /proc/loadavg)"

python3 - "$TSV" "$DURATION" "$LAT_DURATION" "$CONNS" "$REPS" >"$MD" <<'EOF'
import statistics, sys
tsv, duration, lat_duration, conns, reps = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv)]
data = {}
for s, m, v in rows:
    data.setdefault((s, m), []).append(float(v))
systems = [s for s in ["direct", "gateway", "nginx", "haproxy"] if (s, "max_rps") in data]

def cell(s, m, digits=1):
    v = data.get((s, m))
    if not v:
        return "–"
    f = lambda x: f"{x:.{digits}f}" if digits else f"{x:.0f}"
    med = statistics.median(v)
    return f(med) if len(v) == 1 else f"{f(med)} ({f(min(v))}–{f(max(v))})"

def med(s, m):
    v = data.get((s, m))
    return statistics.median(v) if v else None

slowest = int(data[("all", "slowest_max")][0])
metrics = [
    ("max req/s (closed loop, wrk -c%s)" % conns, "max_rps", 0),
    ("proxy CPU µs per request", "cpu_us_per_req", 2),
    ("proxy CPU use during max run, % of a core", "cpu_util_pct", 0),
]
for pct in (25, 50, 75):
    r = slowest * pct // 100
    metrics.append((f"p50 ms @ {r} req/s ({pct} %)", f"p50_ms_at_{pct}", 3))
    metrics.append((f"p99 ms @ {r} req/s ({pct} %)", f"p99_ms_at_{pct}", 3))
    metrics.append((f"failed requests @ {r} req/s", f"failed_at_{pct}", 0))
metrics.append(("peak RSS MB (all processes)", "peak_rss_mb", 1))
print("| metric | " + " | ".join(systems) + " |")
print("|---|" + "---|" * len(systems))
for label, m, d in metrics:
    print(f"| {label} | " + " | ".join(cell(s, m, d) for s in systems) + " |")
print()
print(f"Medians of {reps} runs, (min–max) in brackets; closed loop {duration} s, open loop {lat_duration} s per sample.")
if all(med(s, "max_rps") for s in ("gateway", "nginx")):
    g, n = med("gateway", "cpu_us_per_req"), med("nginx", "cpu_us_per_req")
    print(f"\nRatios gateway/nginx: CPU per request {g / n:.2f}×, max req/s {med('gateway', 'max_rps') / med('nginx', 'max_rps'):.2f}×.")
if med("gateway", "p99_ms_at_50") is not None and med("direct", "p99_ms_at_50") is not None:
    print(f"Added p99 over direct at 50 %: gateway {med('gateway', 'p99_ms_at_50') - med('direct', 'p99_ms_at_50'):.3f} ms"
          + "".join(f", {s} {med(s, 'p99_ms_at_50') - med('direct', 'p99_ms_at_50'):.3f} ms" for s in ("nginx", "haproxy") if med(s, "p99_ms_at_50") is not None) + ".")
print(f"Workers per proxy: {data[('all', 'workers')][0]:.0f}.")
print(f"Load average before/after: {data[('all', 'load_before')][0]} / {data[('all', 'load_after')][0]}.")
EOF
cat "$MD"
echo "# raw samples: $TSV; run directory: $RUN" >&2
