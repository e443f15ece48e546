#!/usr/bin/env bash
# Hot-path cost of shared limits and Redis's own cost (perf/RESULTS.md "Shared limits").
#   1. instructions per request, sharing off vs on (callgrind: counters zeroed after a warm-up,
#      a fixed wrk run, instructions / requests the gateway served) — 1000 and 10 clients in
#      XFF (under valgrind 1000 clients make every request its own key update: the worst case);
#   2. latency (wrk --latency, closed loop -c8) with sharing off, and on with Redis healthy,
#      200 ms slow (perf/delay_proxy.py in between) and down (redis-server killed);
#   3. Redis cost at 10^5 active keys: key updates/s and EVALSHA/s of one replica, Redis CPU
#      (INFO cpu), usec per call (INFO commandstats), bytes per key (INFO memory / DBSIZE).
# Everything on loopback; each wrk run is bounded in time. Needs valgrind, wrk, redis-server,
# a release gateway and bench-backend. PARTS="callgrind latency redis" selects; REPS (3).
set -euo pipefail
source "$(dirname "$0")/lib-shared.sh"
trap shared_cleanup EXIT
parts=${PARTS:-callgrind latency redis}
reps=${REPS:-3}
export BENCH_TOKEN=""
pin_gw=(taskset -c 0)
pin_load=(taskset -c 1)
xff_extra='trusted_proxies: [127.0.0.1/32]\nforwarded_headers: [x-forwarded-for]\n'
policy='    - { name: per-ip, key: ip, rate: 10000/s, burst: 10000 }\n'

start_redis
start_backend
echo "gateway: $gateway_bin; $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"

wait_in_sync() { # ADMIN_PORT WANT SECONDS
  for _ in $(seq "$(($3 * 5))"); do
    [ "$(metric "$1" gateway_shared_limits_up)" = "$2" ] && return 0
    sleep 0.2
  done
  echo "gateway_shared_limits_up never became $2" >&2
  return 1
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
restart_redis() { # same port and password, empty
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --maxmemory 256mb \
    --maxmemory-policy volatile-ttl --requirepass "$(cat "$run/redis_password")" --dir "$run" \
    --logfile "$run/redis.log" &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis_port" 10
}

# ---- 1. instructions per request ---------------------------------------------------------------
if [[ " $parts " == *" callgrind "* ]]; then
  echo
  echo "| clients (keys) | sharing | requests measured | instructions / request | key updates sent per request |"
  echo "|---|---|---|---|---|"
  for keys in ${CG_KEYS:-1000 10}; do
  for mode in ${CG_MODES:-off on}; do
    shared=no; [ "$mode" = on ] && shared=yes
    START_WAIT=180 start_gateway "cg_${mode}_$keys" "$shared" "$policy" "$xff_extra" \
      valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.$mode.$keys.%p" --dump-instr=no --compress-strings=no
    p=port_cg_${mode}_$keys a=admin_cg_${mode}_$keys pid=pid_cg_${mode}_$keys
    [ "$mode" = on ] && wait_in_sync "${!a}" 1 60
    url="http://127.0.0.1:${!p}/v1/ping"
    KEYS=$keys "${pin_load[@]}" wrk -t1 -c8 -d4s -s "$root/perf/wrk-keys.lua" "$url" >/dev/null   # warm-up
    callgrind_control -z "${!pid}" >/dev/null 2>&1
    r0=$(metric "${!a}" http_requests_total)
    k0=$(metric "${!a}" gateway_shared_limits_synced_keys_total)
    KEYS=$keys "${pin_load[@]}" wrk -t1 -c8 -d8s -s "$root/perf/wrk-keys.lua" "$url" >"$run/wrk.cg.$mode"
    callgrind_control -d "${!pid}" >/dev/null 2>&1
    r1=$(metric "${!a}" http_requests_total)
    k1=$(metric "${!a}" gateway_shared_limits_synced_keys_total)
    sleep 1
    dump=$(ls -t "$run"/callgrind."$mode"."$keys".* | head -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    # The scrapes in between are admin requests, not in http_requests_total; they are in
    # the count of instructions, a few per run (noise of well under 0.1 %).
    python3 -c "import sys; r=$r1-$r0; print(f'| $keys | $mode | {r:.0f} | {$total/r:,.0f} | {($k1-$k0)/r:.2f} |')"
    stop_pid "${!pid}"
  done
  done
fi

# ---- 2. latency: healthy, slow, down ------------------------------------------------------------
wrk_latency() { # URL → "rps p50 p99"
  "${pin_load[@]}" wrk -t1 -c8 -d10s --latency -s "$root/perf/wrk-xff.lua" "$1" |
    awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print rps, p50, p99}'
}
if [[ " $parts " == *" latency "* ]]; then
  echo
  echo "| case | req/s (median) | p50 (median) | p99 (median; min–max over $reps) |"
  echo "|---|---|---|---|"
  proxy_port=$(free_port)
  python3 "$root/perf/delay_proxy.py" "$proxy_port" "$redis_port" 200 &
  pids+=($!)
  wait_port "$proxy_port" 10
  cases=${LAT_CASES:-off healthy slow down}
  for c in $cases; do : >"$run/lat.$c"; done
  for rep in $(seq "$reps"); do
    for c in $cases; do
      case $c in
        off) start_gateway "lat_$c" no "$policy" "$xff_extra" "${pin_gw[@]}" ;;
        healthy | down) start_gateway "lat_$c" yes "$policy" "$xff_extra" "${pin_gw[@]}" ;;
        slow) SHARED_REDIS_PORT=$proxy_port start_gateway "lat_$c" yes "$policy" "$xff_extra" "${pin_gw[@]}" ;;
      esac
      p=port_lat_$c a=admin_lat_$c pid=pid_lat_$c
      case $c in healthy | down) wait_in_sync "${!a}" 1 20 ;; esac
      if [ "$c" = down ]; then
        kill -9 "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
        wait_in_sync "${!a}" 0 10
      fi
      wrk_latency "http://127.0.0.1:${!p}/v1/ping" >>"$run/lat.$c"
      echo "  rep $rep $c: $(tail -1 "$run/lat.$c"); up $(metric "${!a}" gateway_shared_limits_up)," \
        "sync errors $(metric "${!a}" gateway_shared_limits_sync_errors_total)" >&2
      stop_pid "${!pid}"
      [ "$c" = down ] && restart_redis
    done
  done
  for c in $cases; do
    python3 - "$c" "$run/lat.$c" <<'PY'
import re, statistics, sys
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rows = [l.split() for l in open(sys.argv[2]) if l.strip()]
rps = statistics.median(float(r[0]) for r in rows)
p50 = statistics.median(ms(r[1]) for r in rows)
p99s = [ms(r[2]) for r in rows]
label = {"off": "sharing off", "healthy": "on, Redis healthy", "slow": "on, Redis +200 ms", "down": "on, Redis down (killed)"}[sys.argv[1]]
print(f"| {label} | {rps:,.0f} | {p50:.2f} ms | {statistics.median(p99s):.2f} ms ({min(p99s):.2f}–{max(p99s):.2f}) |")
PY
  done
fi

# ---- 3. Redis cost at 10^5 active keys -----------------------------------------------------------
if [[ " $parts " == *" redis "* ]]; then
  rcli FLUSHALL >/dev/null
  rcli CONFIG RESETSTAT >/dev/null
  # 10/hour: one hit keeps a key in Redis for 6 minutes (its refill time), so all 10^5 stay.
  keys_policy='    - { name: keys-per-ip, key: ip, rate: 10/hour, burst: 1000 }\n'
  start_gateway cost yes "$keys_policy" "$xff_extra" "${pin_gw[@]}"
  wait_in_sync "$admin_cost" 1 20
  mem0=$(rcli INFO memory | awk -F: '/^used_memory:/ {print $2+0}')
  db0=$(rcli DBSIZE)
  cpu0=$(rcli INFO cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}')
  k0=$(metric "$admin_cost" gateway_shared_limits_synced_keys_total)
  c0=$(metric "$admin_cost" gateway_shared_limits_sync_duration_seconds_count)
  r0=$(metric "$admin_cost" http_requests_total)
  t0=$(date +%s.%N)
  KEYS=100000 "${pin_load[@]}" wrk -t1 -c16 -d"${COST_SECONDS:-30}s" -s "$root/perf/wrk-keys.lua" "http://127.0.0.1:$port_cost/v1/ping" >"$run/wrk.cost"
  sleep 1   # the last flush
  t1=$(date +%s.%N)
  k1=$(metric "$admin_cost" gateway_shared_limits_synced_keys_total)
  c1=$(metric "$admin_cost" gateway_shared_limits_sync_duration_seconds_count)
  r1=$(metric "$admin_cost" http_requests_total)
  cpu1=$(rcli INFO cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {print s}')
  mem1=$(rcli INFO memory | awk -F: '/^used_memory:/ {print $2+0}')
  db1=$(rcli DBSIZE)
  evalsha=$(rcli INFO commandstats | grep '^cmdstat_evalsha:' | tr -d '\r')
  errors=$(metric "$admin_cost" gateway_shared_limits_sync_errors_total)
  dropped=$(metric "$admin_cost" gateway_shared_limits_dropped_hits_total)
  python3 - <<PY
secs = $t1 - $t0
req, upd, calls = $r1 - $r0, $k1 - $k0, $c1 - $c0
keys = $db1 - $db0
print()
print(f"one replica, {secs:.1f} s of wrk over 100 000 client IPs (policy 10/hour: every key stays in Redis)")
print()
print("| figure | value |")
print("|---|---|")
print(f"| requests served | {req:,.0f} ({req / secs:,.0f}/s) |")
print(f"| key updates sent (gateway_shared_limits_synced_keys_total) | {upd:,.0f} ({upd / secs:,.0f}/s) |")
print(f"| EVALSHA round trips | {calls:,.0f} ({calls / secs:,.0f}/s, {upd / max(calls, 1):.1f} keys each) |")
print(f"| Redis CPU (INFO cpu, user+sys) | {($cpu1 - $cpu0) / secs * 100:.1f} % of one core |")
print(f"| Redis evalsha (INFO commandstats) | {'$evalsha'.split(':', 1)[1]} |")
print(f"| keys in Redis (DBSIZE) | {$db0} → {$db1} |")
print(f"| used_memory | {$mem0:,} → {$mem1:,} B: {($mem1 - $mem0) / max(keys, 1):.0f} B per key |")
print(f"| sync errors / dropped hits | {$errors:.0f} / {$dropped:.0f} |")
PY
  curl -sS -m 5 "http://127.0.0.1:$admin_cost/metrics" | grep -E '^gateway_shared_limits_(sync_errors|dropped_hits)_total' | awk '$2 > 0 {print "  " $0}'
  key=$(rcli --scan --pattern '*:rl:*' 2>/dev/null | head -1 || true)
  [ -n "$key" ] && echo "  sample key: $key ($(rcli MEMORY USAGE "$key") B by MEMORY USAGE), value $(rcli GET "$key"), TTL $(rcli PTTL "$key") ms"
fi
