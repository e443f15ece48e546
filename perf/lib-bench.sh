# Sourced by perf/bench.sh and perf/https-bench.sh: set-up, process bookkeeping, CPU
# accounting and the gateway / nginx / backend start-up they share. The caller sets OUT, BIN,
# PROXY_CPU, LOAD_CPU and the *_PORT variables, calls bench_setup and traps bench_cleanup.
CLK_TCK=$(getconf CLK_TCK)
pids_started=()

bench_setup() { # name tools... — checks the tools, builds, sets RUN, TSV and MD
  local name=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name.sh: $tool is missing (see perf/README.md)" >&2; exit 1; }
  done
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --locked -p gateway -p perf >&2
  fi
  mkdir -p "$OUT"
  local stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  RUN=$(mktemp -d "/tmp/perf-$name.XXXXXX")
  TSV="$OUT/$name-$stamp.tsv"
  MD="$OUT/$name-$stamp.md"
  : >"$TSV"
}

bench_cleanup() {
  for p in "${pids_started[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids_started[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

wait_port() { # port
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$(basename "$0"): nothing listening on port $1" >&2
  exit 1
}

# All processes of a system: the started PID and its children (nginx's worker).
system_pids() { # name
  local root
  root=$(cat "$RUN/$1.pid")
  echo "$root" $(pgrep -P "$root" || true)
}

cpu_ticks() { # pids... -> utime+stime summed (clock ticks), all threads included
  local total=0 p t
  for p in "$@"; do
    # Fields after the ")" that ends comm: utime is the 12th, stime the 13th.
    t=$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
    total=$((total + t))
  done
  echo "$total"
}

peak_rss_kb() { # pids... -> sum of VmHWM
  local total=0 p v
  for p in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status")
    total=$((total + v))
  done
  echo "$total"
}

record_peak_rss() { # every system in $SYSTEMS
  local s pids
  for s in $SYSTEMS; do
    read -r -a pids <<<"$(system_pids "$s")"
    record "$s" peak_rss_mb "$(python3 -c "print(round($(peak_rss_kb "${pids[@]}") / 1024, 1))")"
  done
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$TSV"; } # system metric value

started() { echo "$2" >"$RUN/$1.pid"; pids_started+=("$2"); } # name pid

# A fresh random token key; the gateway verifies BENCH_TOKEN, signed with it.
start_backend() {
  printf 'signing_kid: "bench"\nkeys:\n  - kid: "bench"\n    secret: "%s"\n' \
    "$(head -c 48 /dev/urandom | base64 -w0)" >"$RUN/keys.yaml"
  export BENCH_TOKEN
  BENCH_TOKEN=$("$BIN/mint-token" "$RUN/keys.yaml" u-bench 86400)
  taskset -c "$LOAD_CPU" "$BIN/bench-backend" "127.0.0.1:$BACKEND_PORT" 2>"$RUN/backend.err" &
  started direct $!
  wait_port "$BACKEND_PORT"
}

start_gateway() { # [extra YAML appended to perf/gateway-bench.yaml]
  sed -e "s#^listen: .*#listen: 127.0.0.1:$GATEWAY_PORT#" \
    -e "s#^admin_listen: .*#admin_listen: 127.0.0.1:$ADMIN_PORT#" \
    -e "s#^upstream: .*#upstream: 127.0.0.1:$BACKEND_PORT#" \
    -e "s#^token_key_file: .*#token_key_file: $RUN/keys.yaml#" \
    -e "s#^threads: 1 #threads: ${WORKERS:-1} #" perf/gateway-bench.yaml >"$RUN/gateway.yaml"
  printf '%s' "${1:-}" >>"$RUN/gateway.yaml"
  "$BIN/gateway" check-config "$RUN/gateway.yaml" >&2
  taskset -c "$PROXY_CPU" "$BIN/gateway" --config "$RUN/gateway.yaml" >"$RUN/gateway-access.log" 2>"$RUN/gateway.err" &
  started gateway $!
}

start_nginx() { # [extra sed expression applied to perf/nginx.conf]
  sed -e "${1:-}" -e "s#@RUN@#$RUN#g" -e "s#@LISTEN@#127.0.0.1:$NGINX_PORT#g" \
    -e "s#@BACKEND@#127.0.0.1:$BACKEND_PORT#g" -e "s#@LOG@#$RUN/nginx-access.log#g" \
    -e "s#^worker_processes 1;#worker_processes ${WORKERS:-1};#" perf/nginx.conf >"$RUN/nginx.conf"
  nginx -t -q -c "$RUN/nginx.conf" -p "$RUN" 2>&1 | grep -v 'could not open error log file' >&2 || true
  taskset -c "$PROXY_CPU" nginx -c "$RUN/nginx.conf" -p "$RUN" 2>"$RUN/nginx.err" &
  started nginx $!
}
