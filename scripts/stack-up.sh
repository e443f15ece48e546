#!/usr/bin/env bash
# The README's "run the stack" command: creates the stack's secrets on first use, then
# builds and starts everything with Docker Compose. Gateway: http://localhost:8080,
# Grafana: http://127.0.0.1:3000 (admin password in secrets/grafana_admin_password).
#   --shared   also start Redis and the extra gateway replicas (compose profile `shared`);
#              every gateway then runs config/gateway.shared.yaml (shared rate limits).
#   --tls      HTTPS on the public port (compose.tls.yaml + config/gateway.tls.yaml) with the
#              pair in secrets/tls_cert.pem and secrets/tls_key.pem (RUNBOOK.md "Turn on TLS").
#   --self-signed  --tls, and first make a self-signed localhost pair there if there is none
#              (a local try only; scripts/self-signed.sh).
# Other arguments go to `compose up` (e.g. --scale gateway-replica=4).
set -euo pipefail
cd "$(dirname "$0")/.."

tls="" self_signed=""
while [ $# -gt 0 ]; do
  case $1 in
    --shared) export COMPOSE_PROFILES=shared GATEWAY_CONFIG=gateway.shared.yaml ;;
    --tls) tls=1 ;;
    --self-signed) tls=1 self_signed=1 ;;
    *) break ;;
  esac
  shift
done
if [ -n "$tls" ] && [ -n "${COMPOSE_PROFILES:-}" ]; then
  echo "stack-up: --tls with --shared is not shipped (the replicas run gateway.shared.yaml, without tls)" >&2
  exit 2
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

# The gateways' admin.token_file: the bearer token for /limits/top, /limits/key, /limits/reset.
if [ ! -s secrets/admin_token ]; then
  umask 022
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >secrets/admin_token
  echo "created secrets/admin_token" >&2
fi

# The gateways' Redis ACL user `edge` (shared_limits.password_file) and Redis's requirepass
# for operators (hex: no quoting issues).
for f in redis_password redis_admin_password; do
  if [ ! -s "secrets/$f" ]; then
    umask 022
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"secrets/$f"
    echo "created secrets/$f" >&2
  fi
done

if [ -n "$tls" ]; then
  cert=${TLS_CERT_FILE:-secrets/tls_cert.pem} key=${TLS_KEY_FILE:-secrets/tls_key.pem}
  if [ -n "$self_signed" ] && [ ! -s "$cert" ]; then
    scripts/self-signed.sh "$cert" "$key" 30
  fi
  for f in "$cert" "$key"; do
    [ -s "$f" ] || { echo "stack-up: --tls needs $f (RUNBOOK.md \"Turn on TLS\"; --self-signed makes one)" >&2; exit 1; }
  done
  # compose.tls.yaml on top of what is already chosen (COMPOSE_FILE, else compose.yaml).
  case ":${COMPOSE_FILE:-compose.yaml}:" in
    *:compose.tls.yaml:*) ;;
    *) export COMPOSE_FILE=${COMPOSE_FILE:-compose.yaml}:compose.tls.yaml ;;
  esac
  echo "stack-up: TLS on; run later compose commands with COMPOSE_FILE=$COMPOSE_FILE" >&2
fi

compose() { COMPOSE_QUIET=1 scripts/compose.sh "$@"; }
compose version >/dev/null || exit 1
docker info >/dev/null 2>&1 || { echo "stack-up: no Docker engine reachable (is dockerd running? are you in the docker group?)" >&2; exit 1; }

# What exists before, so a failed first start can remove exactly what it created.
project=${COMPOSE_PROJECT_NAME:-$(basename "$PWD")}
ours() { # ours volume|network — names of this project's resources (v1 and v2 spell the project differently)
  local v1 v2
  v2=$(echo "$project" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9_-')
  v1=$(echo "$project" | tr '[:upper:]' '[:lower:]' | tr -cd 'a-z0-9')
  { docker "$1" ls --format '{{.Name}}' --filter "label=com.docker.compose.project=$v2"
    docker "$1" ls --format '{{.Name}}' --filter "label=com.docker.compose.project=$v1"; } 2>/dev/null | sort -u
}
before_volumes=$(ours volume) before_networks=$(ours network)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if compose up -d --build "$@" 2>&1 | tee "$log"; then
  exit 0
fi
echo >&2
if grep -qiE 'registry-1\.docker\.io|gcr\.io|no such host|pull access denied|manifest unknown|TLS handshake timeout|i/o timeout|connection refused|failed to resolve source metadata|not found: manifest' "$log"; then
  echo "stack-up: Docker could not pull an image. The stack needs these from Docker Hub / gcr.io:" >&2
  { grep -h '^FROM ' gateway/Dockerfile app/Dockerfile | awk '{print $2}'
    grep -E '^\s+image: ' compose.yaml | grep -v 'edge-' | awk '{print $2}'; } | sort -u | sed 's/^/  /' >&2
  echo "  Give this host registry access (or a mirror in /etc/docker/daemon.json \"registry-mirrors\"), or" >&2
  echo "  load them with 'docker load' from a machine that has them; tests/images/build-shipped.sh makes" >&2
  echo "  local stand-ins for the two build bases (rust, distroless) but not the telemetry images." >&2
else
  echo "stack-up: '$(basename "$0")' failed (compose output above)." >&2
fi
# Remove the networks and volumes this attempt created (never ones that existed before:
# the documents volume of a running stack is not touched). secrets/ stays for the next try.
new_volumes=$(comm -13 <(echo "$before_volumes") <(ours volume))
new_networks=$(comm -13 <(echo "$before_networks") <(ours network))
compose down --remove-orphans >/dev/null 2>&1 || true   # containers and the project's networks
removed=()
for n in $new_networks; do
  docker network rm "$n" >/dev/null 2>&1 || true
  removed+=("network $n")
done
for v in $new_volumes; do docker volume rm "$v" >/dev/null 2>&1 && removed+=("volume $v"); done
if [ ${#removed[@]} -gt 0 ]; then
  echo "stack-up: cleaned up what this attempt created: ${removed[*]}" >&2
else
  echo "stack-up: nothing new to clean up" >&2
fi
echo "stack-up: secrets/ is kept for the next attempt; remove everything with: scripts/compose.sh down -v" >&2
exit 1
