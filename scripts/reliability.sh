#!/usr/bin/env bash
# Longer local runs of the hostile-input and failure suite (CI runs the same tests
# at scale 1, see RELIABILITY.md). Usage:
#   scripts/reliability.sh [SCALE] [FUZZ_CAP_SECONDS_PER_TARGET]     (defaults: 5, 3600)
# Fuzzing: every target runs until FUZZ_RUNS execs (default 10^7) in the release
# (optimised, instrumented) fuzz build; a target the time cap stops short fails the run.
# SCALE multiplies the load in gateway/tests/faults.rs (slowloris samples, reload
# count, limiter flood size) and the kill -9 rounds in app/tests/durability.rs.
# Loopback only. Prints the figure lines of every test and the fuzz summary, and
# keeps the full log in target/reliability-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

scale="${1:-5}"
fuzz_secs="${2:-3600}"
fuzz_runs="${FUZZ_RUNS:-10000000}"
log="target/reliability-$(date +%Y%m%d-%H%M%S).log"
mkdir -p target
# 1000 slowloris connections need ~2000 fds in the test and the gateway together.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

run() {
  echo "== $*" | tee -a "$log"
  local part rc=0
  part=$(mktemp)
  "$@" >"$part" 2>&1 || rc=$?
  cat "$part" >>"$log"
  grep -E '(hostile_forwarded|smuggling|slowloris|app kill|app stall|reload under load|limiter flood|durability)[a-z -]*:|execs .* crashes|^test result|panicked|FAILED' "$part" || true
  rm -f "$part"
  return "$rc"
}

start=$(date +%s)
run cargo test --locked -p gateway --test hostile_forwarded --test smuggling -- --nocapture
FAULTS_SCALE="$scale" run cargo test --locked -p gateway --test faults -- --nocapture --test-threads=1
FAULTS_SCALE="$scale" run cargo test --locked -p app --test durability -- --nocapture
FUZZ_DEV=0 FUZZ_RUNS="$fuzz_runs" nice -n 10 scripts/fuzz.sh "$fuzz_secs" 2>&1 | tee -a "$log"
echo "reliability run (scale $scale, fuzz $fuzz_runs execs/target, cap ${fuzz_secs}s) passed in $(( $(date +%s) - start ))s; log: $log" | tee -a "$log"
