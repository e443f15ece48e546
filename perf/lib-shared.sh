# Sourced by perf/shared-*.sh: start redis-server, the bench backend and gateways on free
# loopback ports, each in $run (a temp dir), all stopped by `shared_cleanup` (trap it).
# Needs: redis-server (Debian), a built gateway and bench-backend.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
profile=${PROFILE:-release}
gateway_bin=${GATEWAY_BIN:-$target/$profile/gateway}
backend_bin=${BACKEND_BIN:-$target/$profile/bench-backend}
[ -x "$backend_bin" ] || backend_bin=$target/debug/bench-backend
run=$(mktemp -d /tmp/perf-shared.XXXXXX)
pids=()

shared_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $run" >&2 || rm -rf "$run"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # PORT SECONDS
  for _ in $(seq "$(($2 * 10))"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

# start_redis → sets redis_port; password in $run/redis_password.
start_redis() {
  redis_port=$(free_port)
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/redis_password"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --maxmemory 256mb --maxmemory-policy volatile-ttl --requirepass "$(cat "$run/redis_password")" \
    --dir "$run" --logfile "$run/redis.log" &
  redis_pid=$!
  pids+=("$redis_pid")
  wait_port "$redis_port" 10
}
rcli() { REDISCLI_AUTH=$(cat "$run/redis_password") redis-cli -p "${RCLI_PORT:-$redis_port}" "$@"; }

# start_backend → sets backend_port.
start_backend() {
  backend_port=$(free_port)
  "$backend_bin" "127.0.0.1:$backend_port" 2>"$run/backend.log" &
  pids+=($!)
  wait_port "$backend_port" 10
}

# start_gateway NAME SHARED(yes|no) POLICIES_YAML [EXTRA_YAML] [WRAPPER…]
#   → sets port_NAME, admin_NAME, pid_NAME. WRAPPER (e.g. valgrind …) runs the gateway.
#   SHARED_REDIS_PORT overrides the Redis port the config names (a delaying proxy).
start_gateway() {
  local name=$1 shared=$2 policies=$3 extra=${4:-}
  shift 4 || shift $#
  local port admin cfg=$run/$name.yaml
  port=$(free_port)
  admin=$(free_port)
  {
    printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nupstream: 127.0.0.1:%s\n' "$port" "$admin" "$backend_port"
    printf 'token_key_file: %s/config/dev-token-keys.yaml\nroutes: ["/v1/"]\nthreads: 1\n' "$root"
    if [ "$shared" = yes ]; then
      printf 'shared_limits:\n  redis: redis://127.0.0.1:%s/0\n  password_file: %s/redis_password\n' \
        "${SHARED_REDIS_PORT:-$redis_port}" "$run"
      printf '  key_prefix: %s\n  sync_interval: %s\n  on_unavailable: share\n' "${KEY_PREFIX:-perf}" "${SYNC_INTERVAL:-250ms}"
    fi
    printf '%b' "$extra"
    printf 'rate_limits:\n  max_keys: 200000\n  policies:\n%b' "$policies"
  } >"$cfg"
  "$@" "$gateway_bin" --config "$cfg" >"$run/$name.log" 2>&1 &
  pids+=($!)
  printf -v "port_$name" %s "$port"
  printf -v "admin_$name" %s "$admin"
  printf -v "pid_$name" %s "$!"
  wait_port "$port" "${START_WAIT:-30}"
}

metric() { # ADMIN_PORT NAME [LABEL_FILTER] — sum of the samples
  curl -sS -m 5 "http://127.0.0.1:$1/metrics" | awk -v n="$2" -v f="${3:-}" \
    'index($0, n) == 1 && (substr($0, length(n) + 1, 1) == " " || substr($0, length(n) + 1, 1) == "{") && index($0, f) { s += $NF } END { printf "%.6g\n", s + 0 }'
}
