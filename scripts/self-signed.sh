#!/usr/bin/env bash
# Writes a self-signed certificate + key for a local try of TLS (never for production):
#   scripts/self-signed.sh CERT_FILE KEY_FILE [DAYS]   (default 30 days)
# ECDSA P-256, CN and subjectAltName localhost + 127.0.0.1 + ::1, PKCS#8 key. The files are
# 0644 (the gateway container's uid 65532 reads them through a compose bind mount; keep them in
# a 0700 directory such as secrets/). Used by scripts/stack-up.sh --self-signed and perf/https-bench.sh.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 CERT_FILE KEY_FILE [DAYS]" >&2; exit 2; }
cert=$1 key=$2 days=${3:-30}
command -v openssl >/dev/null ||
  { echo "self-signed: needs the openssl CLI (as root, or prefix sudo: apt-get install -y openssl)" >&2; exit 1; }
tmp=$(mktemp -d "$(dirname "$cert")/.self-signed.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
  -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1' \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
chmod 0644 "$tmp/key.pem" "$tmp/cert.pem"
# Both written, then renamed into place: a gateway watching the paths never sees half a pair.
# (Under a running compose stack, renew with cp instead: RUNBOOK.md "Renew the certificate".)
mv "$tmp/cert.pem" "$cert"
mv "$tmp/key.pem" "$key"
echo "self-signed: wrote $cert and $key (localhost, $days days: $(openssl x509 -in "$cert" -noout -enddate))" >&2
