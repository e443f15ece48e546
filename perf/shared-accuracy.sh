#!/usr/bin/env bash
# Accuracy of shared limits (perf/RESULTS.md "Shared limits"): 3 gateway replicas sharing one
# policy through redis-server, and one unshared gateway fed the same requests, 100/min burst 20
# per client IP; a 2x and a 10x client at once (their own keys), Poisson arrivals spread
# round-robin over the replicas, DURATION seconds (default 600). Prints the table.
# Low-rate (about 40 req/s in all). Needs redis-server and a built gateway + bench-backend:
#   cargo build --release -p gateway && cargo build -p perf --bin bench-backend
#   perf/shared-accuracy.sh                      # 10 min
#   DURATION=60 PROFILE=debug perf/shared-accuracy.sh
set -euo pipefail
source "$(dirname "$0")/lib-shared.sh"
trap shared_cleanup EXIT
duration=${DURATION:-600}

start_redis
start_backend
policy='    - { name: accuracy-per-ip, key: ip, rate: 100/min, burst: 20 }\n'
for r in r1 r2 r3; do start_gateway "$r" yes "$policy"; done
start_gateway single no "$policy"
# Every replica in sync (and seeing the others) before the clock starts.
for _ in $(seq 100); do
  ok=1
  for a in "$admin_r1" "$admin_r2" "$admin_r3"; do
    [ "$(metric "$a" gateway_shared_limits_up)" = 1 ] && [ "$(metric "$a" gateway_shared_limits_replicas)" = 3 ] || ok=0
  done
  [ "$ok" = 1 ] && break
  sleep 0.2
done
[ "$ok" = 1 ] || { echo "replicas not in sync; logs in $run (KEEP=1)" >&2; tail -5 "$run"/r1.log >&2; exit 1; }

echo "gateway: $gateway_bin; redis-server $(redis-server --version | grep -o 'v=[^ ]*'); $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
# A once-a-second sample of each replica's up / replicas gauges, to place any excess in time.
if [ -n "${SAMPLES_OUT:-}" ]; then
  ( while sleep 1; do
      printf '%s' "$(date +%s.%N)"
      for a in "$admin_r1" "$admin_r2" "$admin_r3"; do
        printf ' %s/%s' "$(metric "$a" gateway_shared_limits_up)" "$(metric "$a" gateway_shared_limits_replicas)"
      done
      echo
    done >"$SAMPLES_OUT" ) &
  pids+=($!)
fi
python3 "$root/perf/shared_accuracy.py" --duration "$duration" --rate-per-min 100 --burst 20 \
  --replicas "$port_r1,$port_r2,$port_r3" --single "$port_single" \
  --level "2x:2:127.0.0.2" --level "10x:10:127.0.0.10" --json "${JSON_OUT:-/dev/null}"
echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
for r in r1 r2 r3; do
  a=admin_$r
  echo "$r: up $(metric "${!a}" gateway_shared_limits_up), replicas $(metric "${!a}" gateway_shared_limits_replicas)," \
    "key updates $(metric "${!a}" gateway_shared_limits_synced_keys_total), sync errors $(metric "${!a}" gateway_shared_limits_sync_errors_total)," \
    "dropped hits $(metric "${!a}" gateway_shared_limits_dropped_hits_total), EVALSHA round trips $(metric "${!a}" gateway_shared_limits_sync_duration_seconds_count)"
  curl -sS -m 5 "http://127.0.0.1:${!a}/metrics" | grep -E '^gateway_shared_limits_(sync_errors|dropped_hits)_total' | awk '$2 > 0 {print "    " $0}'
  grep '"target":"shared_limits"' "$run/$r.log" | grep -v '"message":"access"' | cut -c1-300 | sed 's/^/    /' || true
done
