#!/usr/bin/env bash
# Live alert delivery (scripts/test.sh runs it): Debian's real prometheus and
# prometheus-alertmanager with this repo's prometheus/ and alertmanager/ configs, real gateway
# and app processes, a webhook receiver; kills the app and waits for UpstreamDown (with its
# runbook link) and its resolution; evaluates every dashboard query. Loopback only, < 4 min.
# The details and every rewrite of the configs: tests/alerting/live_alerts.py.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || need+=(prometheus-alertmanager)
if [ ${#need[@]} -gt 0 ]; then
  echo "alert-delivery-test: needs ${need[*]} (as root, or prefix sudo: apt-get install -y ${need[*]})" >&2
  exit 1
fi
cargo build --locked -q -p gateway -p app
exec timeout 240 python3 tests/alerting/live_alerts.py
