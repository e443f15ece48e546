#!/usr/bin/env bash
# Runs the app and the gateway from source, without Docker, on loopback:
# gateway http://127.0.0.1:8080 (admin 127.0.0.1:9901), app 127.0.0.1:8081 behind it.
# The configs are the compose stack's (config/*.yaml) with addresses and paths rewritten
# for loopback, written to target/local/ — edit target/local/gateway.yaml to try a hot reload.
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin app --bin gateway
mkdir -p data/app target/local
sed -e 's|^listen: .*|listen: 127.0.0.1:8080|' \
    -e 's|^admin_listen: .*|admin_listen: 127.0.0.1:9901|' \
    -e 's|^upstream: .*|upstream: 127.0.0.1:8081|' \
    -e 's|^token_key_file: .*|token_key_file: config/dev-token-keys.yaml|' \
    -e 's|^  token_file: /run/secrets/admin_token.*|  token_file: target/local/admin_token|' \
    config/gateway.yaml >target/local/gateway.yaml
[ -s target/local/admin_token ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >target/local/admin_token
sed -e 's|^listen: .*|listen: 127.0.0.1:8081|' \
    -e 's|^data_dir: .*|data_dir: ./data/app|' \
    -e 's|^users_file: .*|users_file: config/users.yaml|' \
    -e 's|^token_key_file: .*|token_key_file: config/dev-token-keys.yaml|' \
    config/app.yaml >target/local/app.yaml
./target/release/app --config target/local/app.yaml &
app_pid=$!
./target/release/gateway --config target/local/gateway.yaml &
gw_pid=$!
stopping=0
stop() { # Ctrl-C / TERM: both drain and exit; that is a normal end, so exit 0.
  stopping=1
  trap - INT TERM
  kill -TERM "$gw_pid" "$app_pid" 2>/dev/null || true
  wait "$gw_pid" "$app_pid" 2>/dev/null || true
  echo "run-local: stopped" >&2
  exit 0
}
trap stop INT TERM
trap 'kill -TERM $gw_pid $app_pid 2>/dev/null || true' EXIT
# The URL only once both listeners answer (the gateway's /readyz is 200 only when it reaches
# the app), so a copy-pasted curl never meets "connection refused".
ready=0
for _ in $(seq 150); do
  if curl -fsS -m 1 -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null &&
    curl -sS -m 1 -o /dev/null http://127.0.0.1:8080/ 2>/dev/null; then
    ready=1 && break
  fi
  kill -0 "$gw_pid" 2>/dev/null && kill -0 "$app_pid" 2>/dev/null || break
  sleep 0.2
done
if [ "$ready" = 1 ]; then
  echo "gateway on http://127.0.0.1:8080 (admin http://127.0.0.1:9901) — Ctrl-C to stop" >&2
else
  echo "run-local: gateway/app did not come up within 30 s (see their output above)" >&2
  exit 1
fi
rc=0
wait -n "$app_pid" "$gw_pid" || rc=$?
# Reached only when a process ended on its own (Ctrl-C goes through stop()).
[ "$stopping" = 1 ] || echo "run-local: a process exited (rc $rc); stopping the other" >&2
exit "$rc"
