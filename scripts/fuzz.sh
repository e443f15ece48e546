#!/usr/bin/env bash
# Bounded fuzz run of every cargo-fuzz target in fuzz/ (own workspace, not built by
# the main one). Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 25; CI uses
# the default, longer local runs pass e.g. 600).
#
# Works on the stable toolchain: `-s none` turns off AddressSanitizer (which needs
# nightly -Zsanitizer); the rest of cargo-fuzz (libFuzzer + SanitizerCoverage via
# -Cpasses=sancov-module) is stable. Safe Rust makes ASan of little use here; the
# targets assert invariants, so a violated one is a crash like any panic.
# `--codegen-units 16` trades a little fuzzing speed for a much faster build.
#
# Prints one line per target (seconds, execs, exec/s, corpus, crashes) and exits
# non-zero if any target crashed; crashing inputs land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-25}"
targets=(client_ip rate_policy token)
flags=(-s none --codegen-units 16)
# FUZZ_DEV=1 (CI): unoptimised instrumented build — about 4x quicker to compile on 2 cores
# (4.5 min vs 18.6 min here), slower per exec; the bounded CI run is a smoke, not a campaign.
if [ "${FUZZ_DEV:-0}" = 1 ]; then
  flags=(-s none --dev)
fi

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi
cargo fuzz build "${flags[@]}"

mkdir -p logs
failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="logs/$t.log"
  # First corpus dir collects new inputs (git-ignored); seeds/ holds the committed seeds.
  rc=0
  cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  summary+=("$(printf '%-12s %5ss  execs %-10s exec/s %-8s corpus %-6s crashes %s (rc %s)' \
    "$t" "$secs" "${execs:-?}" "${rate:-?}" "$corpus" "$crashes" "$rc")")
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "== $t failed; last lines of $log:" >&2
    tail -40 "$log" >&2
  fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"
