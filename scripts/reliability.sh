#!/usr/bin/env bash
# Longer local runs of the hostile-input and failure suite (CI runs the same tests
# at scale 1, see RELIABILITY.md). Usage:
#   scripts/reliability.sh [SCALE] [FUZZ_SECONDS_PER_TARGET]     (defaults: 5, 300)
# SCALE multiplies the load in gateway/tests/faults.rs (slowloris samples, reload
# count, limiter flood size) and the kill -9 rounds in app/tests/durability.rs.
# Loopback only. Prints the figure lines of every test and the fuzz summary, and
# keeps the full log in target/reliability-<date>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

scale="${1:-5}"
fuzz_secs="${2:-300}"
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
run scripts/fuzz.sh "$fuzz_secs"
echo "reliability run (scale $scale, fuzz ${fuzz_secs}s/target) passed in $(( $(date +%s) - start ))s; log: $log" | tee -a "$log"
