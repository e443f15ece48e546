#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: deterministic for a given
# build and inputs, whatever else the machine is doing (perf/RESULTS.md "Tuning log" method).
#
#   perf/instructions.sh                        # gateway (perf/gateway-bench.yaml), bare pingora, nginx, haproxy
#   SYSTEMS=gateway CONFIG=my.yaml perf/instructions.sh
#   MAX_GATEWAY=100000 perf/instructions.sh     # exit 1 if the gateway needs more (an instruction budget)
#   CONFIG=config/gateway.yaml RAISE_LIMITS=1 NO_XFF=1 SYSTEMS="gateway nginx" perf/instructions.sh
#                                               # the shipped config: its policies, rates raised so
#                                               # the one-client load is never refused (same checks);
#                                               # NO_XFF=1: no X-Forwarded-For (perf/wrk-xff.lua)
#
# Method: start the system under `valgrind --tool=callgrind`, warm it up, zero the counters
# (`callgrind_control -z`), load it for DURATION seconds with wrk (keep-alive, perf/wrk-xff.lua:
# 1000 clients in a trusted XFF, a bearer token on every request), dump (`callgrind_control -d`),
# and divide the dumped total by the requests the system itself counted in that window (gateway:
# `http_requests_total`; nginx and haproxy: their access-log lines; bare-pingora, which counts
# nothing: the requests wrk completed). Metrics are scraped outside the counted window. Repeat
# runs of one build agree within ~0.2 % (log batching amortises differently).
# bare-pingora (perf/bare-pingora/src/main.rs) is pingora with one fixed peer and no stages:
# the floor. nginx and haproxy are skipped when not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEMS=${SYSTEMS:-"gateway bare-pingora nginx haproxy"}
CONFIG=${CONFIG:-perf/gateway-bench.yaml}
BIN=${BIN:-target/release}       # gateway, bare-pingora
HELPER_BIN=${HELPER_BIN:-$BIN}   # mint-token, bench-backend (not measured: a debug build will do)
DURATION=${DURATION:-6}   # seconds of counted load (under valgrind a proxy serves ~1-3 k req/s)
CONNS=${CONNS:-8}
BACKEND_PORT=25081 GATEWAY_PORT=25080 ADMIN_PORT=25901 NGINX_PORT=25082 BARE_PORT=25083 HAPROXY_PORT=25084
PATH_UNDER_TEST=/v1/documents

for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install valgrind wrk curl)" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --locked -p gateway -p bare-pingora -p perf >&2
fi

RUN=$(mktemp -d /tmp/perf-instr.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ "${KEEP_RUN:-0}" = 1 ] || rm -rf "$RUN"
}
trap cleanup EXIT

wait_port() { # port
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "instructions.sh: nothing listening on port $1" >&2
  exit 1
}

printf 'signing_kid: "bench"\nkeys:\n  - kid: "bench"\n    secret: "%s"\n' \
  "$(head -c 48 /dev/urandom | base64 -w0)" >"$RUN/keys.yaml"
export BENCH_TOKEN
BENCH_TOKEN=$("$HELPER_BIN/mint-token" "$RUN/keys.yaml" u-bench 86400)
"$HELPER_BIN/bench-backend" "127.0.0.1:$BACKEND_PORT" 2>"$RUN/backend.err" &
pids+=($!)
wait_port $BACKEND_PORT

load() { # port seconds
  wrk -t1 -c"$CONNS" -d"$2"s -s perf/wrk-xff.lua "http://127.0.0.1:$1$PATH_UNDER_TEST" >"$RUN/wrk.out" 2>&1
  if grep -q "Non-2xx" "$RUN/wrk.out"; then
    echo "instructions.sh: non-2xx answers under load:" >&2
    cat "$RUN/wrk.out" >&2
    exit 1
  fi
}

# Total Ir of the newest dump of a callgrind run (all threads: one output file per process).
dumped_total() { # outfile-prefix
  local f
  f=$(ls -t "$1".* 2>/dev/null | head -n 1)
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
}

measure() { # name port pid count_cmd
  local name=$1 port=$2 pid=$3 count=$4 before after ir
  load "$port" 2   # warm-up: pools, caches, token cache, limiter keys
  sleep 0.5
  before=$($count)
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "$port" "$DURATION"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  after=$($count)
  if [ "$count" = count_wrk ]; then before=0; fi
  ir=$(dumped_total "$RUN/$name.cg")
  local n=$((after - before))
  [ "$n" -gt 0 ] || { echo "instructions.sh: $name served no requests" >&2; exit 1; }
  echo "$name $((ir / n)) $n"
}

# Requests wrk completed in its last run (for a system that counts nothing itself).
count_wrk() { awk '/requests in/ {print $1; exit}' "$RUN/wrk.out" 2>/dev/null || echo 0; }

results=()
for s in $SYSTEMS; do
  case $s in
    gateway)
      sed -e "s#^listen: .*#listen: 127.0.0.1:$GATEWAY_PORT#" \
        -e "s#^admin_listen: .*#admin_listen: 127.0.0.1:$ADMIN_PORT#" \
        -e "s#^upstream: .*#upstream: 127.0.0.1:$BACKEND_PORT#" \
        -e "s#^token_key_file: .*#token_key_file: $RUN/keys.yaml#" \
        -e "s#^  token_file: /run/secrets/admin_token.*#  token_file: $RUN/admin_token#" "$CONFIG" >"$RUN/gateway.yaml"
      printf 'instructions-admin-token\n' >"$RUN/admin_token"   # the shipped config names one
      if [ "${RAISE_LIMITS:-0}" = 1 ]; then
        sed -i -e "s#^\( *\)rate: [0-9]*/[a-z]*#\1rate: 1000000/s#" \
          -e "s#^\( *\)burst: [0-9]*#\1burst: 1000000#" "$RUN/gateway.yaml"
      fi
      "$BIN/gateway" check-config "$RUN/gateway.yaml" >&2
      valgrind --tool=callgrind --callgrind-out-file="$RUN/gateway.cg.%p" \
        "$BIN/gateway" --config "$RUN/gateway.yaml" >"$RUN/gateway-access.log" 2>"$RUN/gateway.err" &
      gpid=$!; pids+=($gpid)
      wait_port $GATEWAY_PORT
      count_gateway() {
        curl -s "127.0.0.1:$ADMIN_PORT/metrics" |
          awk '/^http_requests_total\{/ && /status="200"/ {s += $NF} END {printf "%d\n", s}'
      }
      results+=("$(measure gateway $GATEWAY_PORT $gpid count_gateway)")
      kill -TERM "$gpid" 2>/dev/null || true
      ;;
    nginx)
      command -v nginx >/dev/null || { echo "instructions.sh: nginx missing, skipped" >&2; continue; }
      sed -e "s#@RUN@#$RUN#g" -e "s#@LISTEN@#127.0.0.1:$NGINX_PORT#g" \
        -e "s#@BACKEND@#127.0.0.1:$BACKEND_PORT#g" -e "s#@LOG@#$RUN/nginx-access.log#g" \
        -e "s#^master_process on;#master_process off;#" perf/nginx.conf >"$RUN/nginx.conf"
      valgrind --tool=callgrind --callgrind-out-file="$RUN/nginx.cg.%p" \
        nginx -c "$RUN/nginx.conf" -p "$RUN" 2>"$RUN/nginx.err" &
      npid=$!; pids+=($npid)
      wait_port $NGINX_PORT
      # nginx buffers nothing here (no `buffer=` on access_log): one line per request served.
      count_nginx() { wc -l <"$RUN/nginx-access.log"; }
      results+=("$(measure nginx $NGINX_PORT $npid count_nginx)")
      kill -TERM "$npid" 2>/dev/null || true
      ;;
    bare-pingora)
      valgrind --tool=callgrind --callgrind-out-file="$RUN/bare-pingora.cg.%p" \
        "$BIN/bare-pingora" "127.0.0.1:$BARE_PORT" "127.0.0.1:$BACKEND_PORT" >"$RUN/bare.out" 2>"$RUN/bare.err" &
      bpid=$!; pids+=($bpid)
      wait_port $BARE_PORT
      results+=("$(measure bare-pingora $BARE_PORT $bpid count_wrk)")
      kill -TERM "$bpid" 2>/dev/null || true
      ;;
    haproxy)
      command -v haproxy >/dev/null || { echo "instructions.sh: haproxy missing, skipped" >&2; continue; }
      sed -e "s#@RUN@#$RUN#g" -e "s#@LISTEN@#127.0.0.1:$HAPROXY_PORT#g" \
        -e "s#@BACKEND@#127.0.0.1:$BACKEND_PORT#g" perf/haproxy.cfg >"$RUN/haproxy.cfg"
      # -db: foreground, one process; the JSON access lines go to stdout, one per request.
      valgrind --tool=callgrind --callgrind-out-file="$RUN/haproxy.cg.%p" \
        haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy-access.log" 2>"$RUN/haproxy.err" &
      hpid=$!; pids+=($hpid)
      wait_port $HAPROXY_PORT
      count_haproxy() { wc -l <"$RUN/haproxy-access.log"; }
      results+=("$(measure haproxy $HAPROXY_PORT $hpid count_haproxy)")
      kill -TERM "$hpid" 2>/dev/null || true
      ;;
    *) echo "instructions.sh: unknown system $s" >&2; exit 2 ;;
  esac
done

echo "| system | instructions / request | requests counted |"
echo "|---|---|---|"
declare -A per
for r in "${results[@]}"; do
  read -r name ipr n <<<"$r"
  per[$name]=$ipr
  echo "| $name | $ipr | $n |"
done
ratio() { # a b
  [ -n "${per[$1]:-}" ] && [ -n "${per[$2]:-}" ] &&
    awk -v a="${per[$1]}" -v b="${per[$2]}" -v n="$1 / $2" 'BEGIN {printf "%s: %.2f×\n", n, a / b}'
  return 0
}
echo
ratio gateway bare-pingora
ratio gateway nginx
ratio gateway haproxy
ratio bare-pingora nginx
if [ -n "${per[gateway]:-}" ] && [ -n "${per[bare-pingora]:-}" ]; then
  echo "gateway over bare pingora: $((per[gateway] - per[bare-pingora])) instructions/request"
fi
if [ -n "${MAX_GATEWAY:-}" ] && [ -n "${per[gateway]:-}" ] && [ "${per[gateway]}" -gt "$MAX_GATEWAY" ]; then
  echo "instructions.sh: gateway ${per[gateway]} instructions/request > budget $MAX_GATEWAY" >&2
  exit 1
fi
