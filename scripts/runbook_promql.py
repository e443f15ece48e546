"""Prints RUNBOOK.md's ```promql blocks (one query per line) as a Prometheus rule file,
so `promtool check rules` parses every query on-call is told to paste."""
import json
import re
import sys

text = open(sys.argv[1]).read()
exprs = [line.strip() for block in re.findall(r"```promql\n(.*?)```", text, re.S)
         for line in block.splitlines() if line.strip()]
if not exprs:
    sys.exit("RUNBOOK.md has no promql blocks")
rules = [{"record": "runbook:query_%d" % i, "expr": e} for i, e in enumerate(exprs)]
print(json.dumps({"groups": [{"name": "runbook", "rules": rules}]}))
