#!/usr/bin/env bash
# `docker compose` (v2) where the host has it, else `docker-compose` (v1): the one compose
# command README and RUNBOOK give, e.g. `scripts/compose.sh down`. Says which it picked on
# stderr when it falls back (a v1-only host's `docker compose …` prints Docker's help and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
  [ -n "${COMPOSE_QUIET:-}" ] || echo "compose.sh: no Compose v2 plugin here; using docker-compose ($(docker-compose version --short 2>/dev/null || echo v1))" >&2
  exec docker-compose "$@"
else
  echo "compose.sh: neither 'docker compose' nor 'docker-compose' found (as root, or prefix sudo: apt-get install -y docker-compose)" >&2
  exit 127
fi
