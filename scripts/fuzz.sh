#!/usr/bin/env bash
# Bounded fuzz run of every cargo-fuzz target in fuzz/ (own workspace, not built by
# the main one). Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] (default 25; CI uses
# the default, longer local runs pass e.g. 600).
# FUZZ_RUNS=N: run each target until N execs instead (SECONDS_PER_TARGET is then the
# time cap; a target stopped by the cap before N execs fails the run).
# FUZZ_TARGETS="head token": only these targets.
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
read -r -a targets <<<"${FUZZ_TARGETS:-client_ip rate_policy token head h2_to_h1 proxy_protocol}"
runs="${FUZZ_RUNS:-}"
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
  bound=(-max_total_time="$secs")
  [ -n "$runs" ] && bound+=(-runs="$runs")
  start=$(date +%s)
  cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    "${bound[@]}" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  took=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  # libFuzzer's last status line: "#N DONE cov: C ft: F corp: ..."
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  if [ -n "$runs" ] && [ "${execs:-0}" -lt "$runs" ]; then
    echo "== $t: $execs execs < $runs before the ${secs}s cap" >&2
    if [ "$rc" -eq 0 ]; then rc=1; fi
  fi
  crashes=$(find "artifacts/$t" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  summary+=("$(printf '%-12s %5ss  execs %-10s exec/s %-8s %-20s corpus %-6s crashes %s (rc %s)' \
    "$t" "$took" "${execs:-?}" "${rate:-?}" "${cov:-cov: ?}" "$corpus" "$crashes" "$rc")")
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "== $t failed; last lines of $log:" >&2
    tail -40 "$log" >&2
  fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"
