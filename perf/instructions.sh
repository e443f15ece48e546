#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: deterministic for a given
# build and inputs, whatever else the machine is doing (perf/RESULTS.md "Tuning log" method).
#
#   perf/instructions.sh                        # gateway (perf/gateway-bench.yaml), bare pingora, nginx, haproxy
#   SYSTEMS=gateway CONFIG=my.yaml perf/instructions.sh
#   MAX_GATEWAY=100000 perf/instructions.sh     # exit 1 if the gateway needs more (an instruction budget)
#   MODES="tls-h1 tls-h2" SYSTEMS="gateway nginx" perf/instructions.sh   # over TLS only
#   MAX_GATEWAY_TLS_H2=120000 perf/instructions.sh                       # a budget for HTTP/2 over TLS
#
# Modes (MODES, default all three):
#   h1      cleartext HTTP/1.1 keep-alive: wrk for DURATION seconds (every system)
#   tls-h1  HTTP/1.1 over TLS: `h2load --h1 -c$TLS_CONNS -n$TLS_REQUESTS` (gateway, nginx)
#   tls-h2  HTTP/2 over TLS: `h2load -c$TLS_CONNS -m$H2_STREAMS -n$TLS_REQUESTS` (gateway, nginx)
# Both TLS modes: one self-signed ECDSA P-256 certificate (scripts/self-signed.sh), the same
# connection count (so the same handshakes, amortised over TLS_REQUESTS / TLS_CONNS requests
# each), one client address in X-Forwarded-For and the bench token; the gateway runs
# perf/gateway-bench.yaml plus a `tls` block, nginx perf/nginx.conf with `listen … ssl http2`
# (TLS 1.2/1.3, HSTS), as perf/https-bench.sh does. A TLS mode's gateway and nginx serve both
# TLS modes from one process each.
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
MODES=${MODES:-"h1 tls-h1 tls-h2"}
TLS_CONNS=${TLS_CONNS:-4}
TLS_REQUESTS=${TLS_REQUESTS:-8000}   # per counted TLS run (~3-6 s under callgrind)
H2_STREAMS=${H2_STREAMS:-8}
BACKEND_PORT=25081 GATEWAY_PORT=25080 ADMIN_PORT=25901 NGINX_PORT=25082 BARE_PORT=25083 HAPROXY_PORT=25084
PATH_UNDER_TEST=/v1/documents

for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install valgrind wrk curl)" >&2; exit 1; }
done
case " $MODES " in
  *" tls-"*)
    for tool in h2load openssl; do
      command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing (apt-get install nghttp2-client openssl)" >&2; exit 1; }
    done
    ;;
esac
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

MODE=h1   # what load() sends: the mode being measured
load() { # port seconds (h1) | port requests (tls-*)
  case $MODE in
    h1)
      wrk -t1 -c"$CONNS" -d"$2"s -s perf/wrk-xff.lua "http://127.0.0.1:$1$PATH_UNDER_TEST" >"$RUN/wrk.out" 2>&1
      if grep -q "Non-2xx" "$RUN/wrk.out"; then
        echo "instructions.sh: non-2xx answers under load:" >&2
        cat "$RUN/wrk.out" >&2
        exit 1
      fi
      ;;
    tls-h1 | tls-h2)
      local proto=(--h1) want=http/1.1
      [ "$MODE" = tls-h2 ] && proto=(-m"$H2_STREAMS") want=h2
      local xff=(-H "x-forwarded-for: 198.18.0.1")
      [ "${NO_XFF:-0}" = 1 ] && xff=()
      h2load -t1 -c"$TLS_CONNS" -n"$2" "${proto[@]}" "${xff[@]}" \
        -H "authorization: Bearer $BENCH_TOKEN" "https://127.0.0.1:$1$PATH_UNDER_TEST" >"$RUN/h2load.out" 2>&1
      # Every request answered 2xx, over the protocol the mode names.
      if ! awk -v n="$2" '/^status codes:/ {ok = $3 + 0} END {exit ok == n ? 0 : 1}' "$RUN/h2load.out" ||
        ! grep -q "^Application protocol: $want\$" "$RUN/h2load.out"; then
        echo "instructions.sh: $MODE: not every request answered 2xx over $want:" >&2
        cat "$RUN/h2load.out" >&2
        exit 1
      fi
      ;;
  esac
}

# Total Ir of the newest dump of a callgrind run (all threads: one output file per process).
dumped_total() { # outfile-prefix
  local f
  f=$(ls -t "$1".* 2>/dev/null | head -n 1)
  awk '/^(summary|totals):/ {print $2; exit}' "$f"
}

measure() { # name port pid count_cmd
  local name=$1 port=$2 pid=$3 count=$4 before after ir warm=2 amount=$DURATION
  [ "$MODE" = h1 ] || warm=$((TLS_REQUESTS / 8)) amount=$TLS_REQUESTS
  load "$port" "$warm"   # warm-up: pools, caches, token cache, limiter keys
  sleep 0.5
  before=$($count)
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "$port" "$amount"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 0.5
  after=$($count)
  if [ "$count" = count_wrk ]; then before=0; fi
  ir=$(dumped_total "$RUN/$name.cg")
  local n=$((after - before))
  # A TLS run is a fixed count that h2load saw answered 2xx, every one; haproxy's log lines
  # on stdout can trail its answers, so only the gateway's own counter is read there.
  if [ "$MODE" != h1 ] && [ "$name" != gateway ]; then n=$amount; fi
  [ "$n" -gt 0 ] || { echo "instructions.sh: $name served no requests" >&2; exit 1; }
  echo "$name $MODE $((ir / n)) $n"
}

# Requests wrk completed in its last run (for a system that counts nothing itself).
count_wrk() { awk '/requests in/ {print $1; exit}' "$RUN/wrk.out" 2>/dev/null || echo 0; }

# The modes a system is measured in: cleartext first (one process), then both TLS modes (one
# process with a TLS listener on the same port). bare-pingora has no TLS listener.
modes_of() { # system
  local m out=()
  for m in $MODES; do
    case $m in
      h1) out+=(h1) ;;
      tls-h1 | tls-h2) [ "$1" = bare-pingora ] || out+=("$m") ;;
      *) echo "instructions.sh: unknown mode $m" >&2; exit 2 ;;
    esac
  done
  echo "${out[@]}"
}
tls_wanted() { case " $(modes_of "$1") " in *" tls-"*) return 0 ;; esac; return 1; }
cleartext_wanted() { case " $(modes_of "$1") " in *" h1 "*) return 0 ;; esac; return 1; }

if [ -n "$(for s in $SYSTEMS; do tls_wanted "$s" && echo y; done)" ]; then
  scripts/self-signed.sh "$RUN/cert.pem" "$RUN/key.pem" 2 2>/dev/null
  cat "$RUN/cert.pem" "$RUN/key.pem" >"$RUN/cert-and-key.pem"   # haproxy's crt
fi

stop() { # pid: its final dump is written before the next process takes the port
  kill -TERM "$1" 2>/dev/null || true
  # A second signal cuts the gateway's shutdown_delay short (the shipped config has 5 s).
  sleep 0.2
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Measures SYSTEM (already listening on PORT as PID) in each mode of the list.
measure_modes() { # name port pid count_cmd modes...
  local name=$1 port=$2 pid=$3 count=$4
  shift 4
  for MODE in "$@"; do
    results+=("$(measure "$name" "$port" "$pid" "$count")")
  done
  MODE=h1
}

count_gateway() {
  curl -s "127.0.0.1:$ADMIN_PORT/metrics" |
    awk '/^http_requests_total\{/ && /status="200"/ {s += $NF} END {printf "%d\n", s}'
}
# nginx and haproxy buffer nothing here (no `buffer=` on access_log, haproxy's lines go to
# stdout): one line per request served.
count_nginx() { wc -l <"$RUN/nginx-access.log"; }
count_haproxy() { wc -l <"$RUN/haproxy-access.log"; }

start_gateway() { # tls: 0 | 1 -> sets started_pid
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
  if [ "$1" = 1 ]; then
    printf 'tls:\n  cert_file: %s\n  key_file: %s\n' "$RUN/cert.pem" "$RUN/key.pem" >>"$RUN/gateway.yaml"
  fi
  "$BIN/gateway" check-config "$RUN/gateway.yaml" >&2
  valgrind --tool=callgrind --callgrind-out-file="$RUN/gateway.cg.%p" \
    "$BIN/gateway" --config "$RUN/gateway.yaml" >>"$RUN/gateway-access.log" 2>>"$RUN/gateway.err" &
  started_pid=$!
}

start_nginx() { # tls: 0 | 1 -> sets started_pid
  local tls_sed=""
  # As perf/https-bench.sh: TLS 1.2/1.3, h2 and http/1.1 by ALPN, HSTS.
  [ "$1" = 1 ] && tls_sed="s#^\( *\)listen @LISTEN@ \(.*\);#\1listen @LISTEN@ ssl http2 \2;\n\1ssl_certificate $RUN/cert.pem;\n\1ssl_certificate_key $RUN/key.pem;\n\1ssl_protocols TLSv1.2 TLSv1.3;\n\1add_header Strict-Transport-Security \"max-age=31536000\" always;#"
  sed -e "$tls_sed" -e "s#@RUN@#$RUN#g" -e "s#@LISTEN@#127.0.0.1:$NGINX_PORT#g" \
    -e "s#@BACKEND@#127.0.0.1:$BACKEND_PORT#g" -e "s#@LOG@#$RUN/nginx-access.log#g" \
    -e "s#^master_process on;#master_process off;#" perf/nginx.conf >"$RUN/nginx.conf"
  valgrind --tool=callgrind --callgrind-out-file="$RUN/nginx.cg.%p" \
    nginx -c "$RUN/nginx.conf" -p "$RUN" 2>>"$RUN/nginx.err" &
  started_pid=$!
}

start_haproxy() { # tls: 0 | 1 -> sets started_pid
  local bind="@LISTEN@"
  [ "$1" = 1 ] && bind="@LISTEN@ ssl crt $RUN/cert-and-key.pem alpn h2,http\/1.1 ssl-min-ver TLSv1.2"
  sed -e "s#^\( *\)bind @LISTEN@\$#\1bind $bind#" -e "s#@RUN@#$RUN#g" -e "s#@LISTEN@#127.0.0.1:$HAPROXY_PORT#g" \
    -e "s#@BACKEND@#127.0.0.1:$BACKEND_PORT#g" perf/haproxy.cfg >"$RUN/haproxy.cfg"
  # -db: foreground, one process; the JSON access lines go to stdout, one per request.
  valgrind --tool=callgrind --callgrind-out-file="$RUN/haproxy.cg.%p" \
    haproxy -db -f "$RUN/haproxy.cfg" >>"$RUN/haproxy-access.log" 2>>"$RUN/haproxy.err" &
  started_pid=$!
}

results=()
for s in $SYSTEMS; do
  case $s in
    gateway | nginx | haproxy)
      command -v "$s" >/dev/null || [ "$s" = gateway ] || { echo "instructions.sh: $s missing, skipped" >&2; continue; }
      port_var=${s^^}_PORT
      for tls in 0 1; do
        if [ "$tls" = 0 ]; then
          cleartext_wanted "$s" || continue
          read -r -a ms <<<h1
        else
          tls_wanted "$s" || continue
          ms=()
          for m in $(modes_of "$s"); do [ "$m" = h1 ] || ms+=("$m"); done
        fi
        "start_$s" "$tls"
        pid=$started_pid
        pids+=("$pid")
        wait_port "${!port_var}"
        measure_modes "$s" "${!port_var}" "$pid" "count_$s" "${ms[@]}"
        stop "$pid"
      done
      ;;
    bare-pingora)
      cleartext_wanted bare-pingora || continue
      valgrind --tool=callgrind --callgrind-out-file="$RUN/bare-pingora.cg.%p" \
        "$BIN/bare-pingora" "127.0.0.1:$BARE_PORT" "127.0.0.1:$BACKEND_PORT" >"$RUN/bare.out" 2>"$RUN/bare.err" &
      bpid=$!; pids+=($bpid)
      wait_port $BARE_PORT
      measure_modes bare-pingora $BARE_PORT $bpid count_wrk h1
      stop "$bpid"
      ;;
    *) echo "instructions.sh: unknown system $s" >&2; exit 2 ;;
  esac
done

echo "| system | mode | instructions / request | requests counted |"
echo "|---|---|---|---|"
declare -A per
for r in "${results[@]}"; do
  read -r name mode ipr n <<<"$r"
  per[$name/$mode]=$ipr
  echo "| $name | $mode | $ipr | $n |"
done
ratio() { # a b (system/mode)
  [ -n "${per[$1]:-}" ] && [ -n "${per[$2]:-}" ] &&
    awk -v a="${per[$1]}" -v b="${per[$2]}" -v n="$1 / $2" 'BEGIN {printf "%s: %.2f×\n", n, a / b}'
  return 0
}
echo
for m in $MODES; do
  ratio "gateway/$m" "bare-pingora/$m"
  ratio "gateway/$m" "nginx/$m"
  ratio "gateway/$m" "haproxy/$m"
  ratio "bare-pingora/$m" "nginx/$m"
done
for s in gateway nginx haproxy; do ratio "$s/tls-h2" "$s/tls-h1"; done
if [ -n "${per[gateway/h1]:-}" ] && [ -n "${per[bare-pingora/h1]:-}" ]; then
  echo "gateway over bare pingora: $((per[gateway/h1] - per[bare-pingora/h1])) instructions/request"
fi
over=0
budget() { # system/mode budget
  if [ -n "$2" ] && [ -n "${per[$1]:-}" ] && [ "${per[$1]}" -gt "$2" ]; then
    echo "instructions.sh: $1 ${per[$1]} instructions/request > budget $2" >&2
    over=1
  fi
}
budget gateway/h1 "${MAX_GATEWAY:-}"
budget gateway/tls-h1 "${MAX_GATEWAY_TLS_H1:-}"
budget gateway/tls-h2 "${MAX_GATEWAY_TLS_H2:-}"
exit "$over"
