#!/usr/bin/env bash
# The test command (README "Test it"); CI runs it after fmt and clippy. Every stage is bounded
# and sends traffic only to loopback or to containers it creates.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }

step "unit + integration tests, hostile-input and failure suite (real processes on loopback)"
# Slowloris holds ~2000 sockets.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace --locked

step "observability configs: promtool check/test rules, dashboards, RUNBOOK queries"
bash scripts/check-observability.sh

step "container tests on the Docker engine (loud skip without one)"
tests/containers/run.sh

step "shared rate limits on the Docker engine: 3 replicas + Redis, network cut (loud skip without one)"
tests/containers/shared-limits.sh

step "load-test smoke: goose scenarios through gateway + app, SLO thresholds, reports"
perf/smoke.sh

step "bounded fuzzing (stable toolchain; 20 s per target)"
FUZZ_DEV=1 scripts/fuzz.sh 20

echo
echo "scripts/test.sh: all stages passed"
