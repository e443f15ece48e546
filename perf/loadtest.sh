#!/usr/bin/env bash
# Runs the user-scenario load test (perf `loadtest`, goose) against a real gateway + app
# started here on loopback, then stops them. Exits with the load test's status: non-zero
# when a threshold (default p95<200ms, p99<500ms, error-rate<1%) or the run fails.
#
#   perf/loadtest.sh                                   # release, 60 s at 500 req/s
#   PROFILE=debug RUN_TIME=5 RATE=100 perf/loadtest.sh # what perf/smoke.sh runs
#   perf/loadtest.sh --threshold 'p95<=20ms' --threshold 'p99<=50ms'   # our own bar
#
# Knobs (environment): PROFILE (release|debug), RUN_TIME (s), RATE (req/s cap, goose
# --throttle-requests), USERS, OUT (report directory), USERS_FILE + LOADTEST_CREDENTIALS,
# SKIP_BUILD=1. Extra arguments go to goose unchanged.
# Reports: $OUT/loadtest.html and $OUT/loadtest.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
RUN_TIME=${RUN_TIME:-60}
RATE=${RATE:-500}
USERS=${USERS:-32}
OUT=${OUT:-perf/out}
USERS_FILE=${USERS_FILE:-perf/loadtest-users.yaml}
if [ -z "${LOADTEST_CREDENTIALS:-}" ] && [ "$USERS_FILE" = perf/loadtest-users.yaml ]; then
  LOADTEST_CREDENTIALS=$(seq 1 8 | sed 's/.*/lt&:loadtest-password-&/' | paste -sd,)
fi
export LOADTEST_CREDENTIALS

case $PROFILE in
  release) BIN=target/release; build_flag=--release ;;
  debug) BIN=target/debug; build_flag= ;;
  *) echo "PROFILE must be release or debug" >&2; exit 2 ;;
esac
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build $build_flag --locked -p gateway -p app -p perf --bin gateway --bin app --bin loadtest >&2
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
GW_PORT=$(free_port) ADMIN_PORT=$(free_port) APP_PORT=$(free_port)
WORK=$(mktemp -d /tmp/perf-loadtest.XXXXXX)
mkdir -p "$OUT" "$WORK/data"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK/data"
}
trap cleanup EXIT

# A fresh random key for this run only: nothing here depends on the dev keys.
printf 'signing_kid: "loadtest"\nkeys:\n  - kid: "loadtest"\n    secret: "%s"\n' \
  "$(head -c 48 /dev/urandom | base64 -w0)" >"$WORK/keys.yaml"
cat >"$WORK/app.yaml" <<EOF
listen: 127.0.0.1:$APP_PORT
data_dir: $WORK/data
users_file: $PWD/$USERS_FILE
token_key_file: $WORK/keys.yaml
token_ttl_seconds: 3600
max_upload_bytes: 1048576
shutdown_grace_seconds: 2
EOF
sed -e "s#^listen: .*#listen: 127.0.0.1:$GW_PORT#" \
  -e "s#^admin_listen: .*#admin_listen: 127.0.0.1:$ADMIN_PORT#" \
  -e "s#^upstream: .*#upstream: 127.0.0.1:$APP_PORT#" \
  -e "s#^token_key_file: .*#token_key_file: $WORK/keys.yaml#" \
  perf/loadtest-gateway.yaml >"$WORK/gateway.yaml"

"$BIN/app" --config "$WORK/app.yaml" >"$WORK/app.log" 2>&1 &
pids+=($!)
"$BIN/gateway" --config "$WORK/gateway.yaml" >"$WORK/gateway.log" 2>&1 &
pids+=($!)
ready=0
for _ in $(seq 1 200); do
  if "$BIN/gateway" healthcheck --url "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.05
done
if [ $ready != 1 ]; then
  echo "loadtest.sh: gateway + app did not become ready" >&2
  tail -5 "$WORK/app.log" "$WORK/gateway.log" >&2
  exit 1
fi

echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg); $RATE req/s cap, $USERS users, ${RUN_TIME}s ($PROFILE)" >&2
status=0
"$BIN/loadtest" --host "http://127.0.0.1:$GW_PORT" --users "$USERS" --increase-rate "$USERS" \
  --run-time "$RUN_TIME" --throttle-requests "$RATE" --quiet --no-reset-metrics \
  --report-file "$OUT/loadtest.html" --report-file "$OUT/loadtest.json" "$@" || status=$?

# What the gateway saw, from its own metrics (the log of this run stays in $WORK).
curl -s "127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^http_requests_total' >&2 || true
if [ $status != 0 ]; then
  echo "loadtest.sh: FAILED (exit $status); gateway/app logs in $WORK" >&2
fi
exit $status
