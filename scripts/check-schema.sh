#!/usr/bin/env bash
# The config schema, checked from outside Rust (scripts/test.sh runs it): every shipped gateway
# config validates against config/gateway.schema.json with Python's `jsonschema`, broken variants
# fail it, and config/gateway.yaml carries the editor modeline. (That the shipped schema equals
# `gateway schema`'s output is the Rust test shipped_schema_is_the_generated_one.)
set -euo pipefail
cd "$(dirname "$0")/.."
for py in python3 /usr/bin/python3; do
  if "$py" -c 'import jsonschema, yaml' 2>/dev/null; then
    exec "$py" tests/schema/validate_configs.py "$@"
  fi
done
echo "check-schema: needs Python's jsonschema and yaml (as root, or prefix sudo: apt-get install -y python3-jsonschema python3-yaml)" >&2
exit 1
