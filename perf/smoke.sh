#!/usr/bin/env bash
# CI smoke version of the user-scenario load test: a few seconds against a real gateway +
# app (debug binaries, which CI builds for the tests anyway), with the SLO thresholds.
# It fails if the harness, the scenarios or the path through the gateway break.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROFILE=${PROFILE:-debug} RUN_TIME=${RUN_TIME:-5} RATE=${RATE:-100} USERS=${USERS:-8}
export OUT=${OUT:-$(mktemp -d /tmp/perf-smoke.XXXXXX)}
perf/loadtest.sh "$@"
# The reports must exist and say requests were made.
test -s "$OUT/loadtest.html"
python3 - "$OUT/loadtest.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
text = json.dumps(report)
assert '"/v1/documents' in text or "POST /v1/documents" in text, "no document requests in the report"
print("perf smoke: report", sys.argv[1], "ok")
PY
