#!/usr/bin/env python3
"""The Prometheus queries of a Grafana dashboard, for the checks that run them.

Used by scripts/check-observability.sh (as a command: prints the queries as recording
rules so `promtool check rules` parses their PromQL) and by tests/alerting/live_alerts.py
(as a module: evaluates them against a real Prometheus).
"""
import json
import re
import sys

RANGE_MACRO = re.compile(r"\$__(rate_interval|interval|range)")


def prometheus_queries(dashboard, range_as):
    """Every Prometheus target's expr, nested rows included, with Grafana's range macros
    replaced by `range_as` (e.g. "5m")."""
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                uid = (t.get("datasource") or p.get("datasource") or {}).get("uid")
                if uid == "prometheus" and t.get("expr"):
                    exprs.append(RANGE_MACRO.sub(range_as, t["expr"]))

    walk(dashboard.get("panels", []))
    return exprs


def main(path):
    d = json.load(open(path))
    assert isinstance(d.get("uid"), str) and d["uid"], "dashboard without a fixed uid"
    assert d.get("panels"), "dashboard without panels"
    rules = [
        {"record": "dashboard:query_%d" % i, "expr": e}
        for i, e in enumerate(prometheus_queries(d, "5m"))
    ]
    assert rules, "no Prometheus queries"
    print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))


if __name__ == "__main__":
    main(sys.argv[1])
