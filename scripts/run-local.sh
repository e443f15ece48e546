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
    config/gateway.yaml >target/local/gateway.yaml
sed -e 's|^listen: .*|listen: 127.0.0.1:8081|' \
    -e 's|^data_dir: .*|data_dir: ./data/app|' \
    -e 's|^users_file: .*|users_file: config/users.yaml|' \
    -e 's|^token_key_file: .*|token_key_file: config/dev-token-keys.yaml|' \
    config/app.yaml >target/local/app.yaml
./target/release/app --config target/local/app.yaml &
app_pid=$!
./target/release/gateway --config target/local/gateway.yaml &
gw_pid=$!
trap 'kill -TERM $gw_pid $app_pid 2>/dev/null; wait' INT TERM EXIT
echo "gateway on http://127.0.0.1:8080 — Ctrl-C to stop" >&2
wait -n $app_pid $gw_pid
