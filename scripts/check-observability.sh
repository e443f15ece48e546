#!/usr/bin/env bash
# Offline checks of the observability configs: Prometheus config and alert rules
# (promtool check + unit tests), the Alertmanager config (amtool check-config) and every
# Grafana dashboard JSON. Installs promtool / amtool from Debian's `prometheus` /
# `prometheus-alertmanager` packages when they are missing.
# Exits non-zero on the first failure.
set -euo pipefail

cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "check-observability: need root (or sudo) to install $*" >&2
        return 1
    fi
}

install_pkg() { # install_pkg DEBIAN_PACKAGE — its service is never left running
    local pkg=$1
    echo "check-observability: installing Debian package $pkg"
    # The package would start its server: forbid service starts while it installs.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        created=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y --no-install-recommends "$pkg" >/dev/null ||
        { as_root apt-get update -qq && as_root apt-get install -y --no-install-recommends "$pkg" >/dev/null; } ||
        rc=$?
    if [ "$created" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    # Where systemd runs, the unit may still have been started: stop and disable it.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now "$pkg" >/dev/null 2>&1 || true
    fi
    return "$rc"
}

command -v promtool >/dev/null 2>&1 || install_pkg prometheus
command -v amtool >/dev/null 2>&1 || install_pkg prometheus-alertmanager
promtool --version 2>&1 | head -1
amtool --version 2>&1 | head -1

echo "== promtool check config prometheus/prometheus.yml"
promtool check config prometheus/prometheus.yml
echo "== promtool check rules prometheus/alerts.yml"
promtool check rules prometheus/alerts.yml
echo "== promtool test rules prometheus/alerts.test.yml"
promtool test rules prometheus/alerts.test.yml

echo "== amtool check-config alertmanager/alertmanager.yml"
amtool check-config alertmanager/alertmanager.yml
# The routing tree sends each severity where the file's comments say.
for case in "severity=critical:page" "severity=warning:ticket" "severity=info:ticket"; do
    got=$(amtool config routes test --config.file=alertmanager/alertmanager.yml "${case%%:*}" alertname=X 2>/dev/null)
    [ "$got" = "${case##*:}" ] ||
        { echo "check-observability: ${case%%:*} routes to '$got', want ${case##*:}" >&2; exit 1; }
done
echo "  routes: critical → page, warning/info → ticket"

echo "== dashboards"
shopt -s nullglob
dashboards=(grafana/dashboards/*.json)
if [ "${#dashboards[@]}" -eq 0 ]; then
    echo "check-observability: no dashboards in grafana/dashboards" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "${dashboards[@]}"; do
    # Valid JSON with a fixed uid and panels; then every Prometheus query becomes a
    # recording rule (Grafana's range macros as 5m) so promtool parses its PromQL.
    python3 scripts/dashboard_queries.py "$f" >"$tmp/dashboard-rules.yml"
    promtool check rules "$tmp/dashboard-rules.yml" >/dev/null ||
        { echo "check-observability: $f has a query promtool cannot parse" >&2; promtool check rules "$tmp/dashboard-rules.yml" >&2; exit 1; }
    echo "  $f: valid JSON; $(grep -o '"record"' "$tmp/dashboard-rules.yml" | wc -l) Prometheus queries parse"
done
echo "== RUNBOOK.md PromQL blocks"
python3 scripts/runbook_promql.py RUNBOOK.md >"$tmp/runbook-rules.yml"
promtool check rules "$tmp/runbook-rules.yml" >/dev/null ||
    { echo "check-observability: RUNBOOK.md has a query promtool cannot parse" >&2; promtool check rules "$tmp/runbook-rules.yml" >&2; exit 1; }
echo "  RUNBOOK.md: $(grep -o '"record"' "$tmp/runbook-rules.yml" | wc -l) PromQL queries parse"
echo "check-observability: all checks passed"
