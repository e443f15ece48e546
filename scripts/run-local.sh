#!/usr/bin/env bash
# Runs the app and the gateway from source with the development config (no Docker).
# Gateway: http://127.0.0.1:8080  (admin: 127.0.0.1:9901)  App: 127.0.0.1:8081 (behind it).
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin app --bin gateway
mkdir -p data/app
./target/release/app --config config/app.yaml &
app_pid=$!
./target/release/gateway --config config/gateway.yaml &
gw_pid=$!
trap 'kill -TERM $gw_pid $app_pid 2>/dev/null; wait' INT TERM EXIT
echo "gateway on http://127.0.0.1:8080 — Ctrl-C to stop" >&2
wait -n $app_pid $gw_pid
