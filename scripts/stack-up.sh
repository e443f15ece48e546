#!/usr/bin/env bash
# The README's "run the stack" command: creates the stack's secrets on first use, then
# builds and starts everything with Docker Compose. Gateway: http://localhost:8080,
# Grafana: http://127.0.0.1:3000 (admin password in secrets/grafana_admin_password).
#   --shared   also start Redis and the extra gateway replicas (compose profile `shared`);
#              every gateway then runs config/gateway.shared.yaml (shared rate limits).
# Other arguments go to `compose up` (e.g. --scale gateway-replica=4).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --shared ]; then
  shift
  export COMPOSE_PROFILES=shared GATEWAY_CONFIG=gateway.shared.yaml
fi

install -d -m 0700 secrets
# Compose bind-mounts file secrets unchanged, so they must be readable by the containers'
# non-root users (0644); the 0700 directory keeps other host users out.
if [ ! -s secrets/token_keys.yaml ]; then
  kid="k-$(date -u +%Y%m%d)"
  umask 022
  printf 'signing_kid: %s\nkeys:\n  - kid: %s\n    secret: "%s"\n' \
    "$kid" "$kid" "$(head -c 48 /dev/urandom | base64 -w0)" >secrets/token_keys.yaml
  echo "created secrets/token_keys.yaml (kid $kid)" >&2
fi
if [ ! -s secrets/grafana_admin_password ]; then
  umask 022
  head -c 18 /dev/urandom | base64 -w0 >secrets/grafana_admin_password
  echo "created secrets/grafana_admin_password" >&2
fi

# Redis's requirepass and the gateways' shared_limits.password_file (hex: no quoting issues).
if [ ! -s secrets/redis_password ]; then
  umask 022
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >secrets/redis_password
  echo "created secrets/redis_password" >&2
fi

if docker compose version >/dev/null 2>&1; then
  exec docker compose up -d --build "$@"
else
  exec docker-compose up -d --build "$@"
fi
