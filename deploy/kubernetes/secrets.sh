#!/usr/bin/env bash
# Creates or updates the kit's Secrets in the current kubectl namespace (README "Run on
# Kubernetes"; RUNBOOK.md "Rotate a Kubernetes Secret"). Secrets never live in git, so the
# kustomization only mounts them. Updating keeps each Secret's name: the kubelet swaps the
# mounted files in place and the gateway and app pick them up without a restart.
#   deploy/kubernetes/secrets.sh --users FILE [--token-keys FILE] [--redis FILE] [--admin-token FILE]
#     --users FILE        the app's users file (password hashes: `app hash-password`)
#     --token-keys FILE   the token key set shared by gateway and app; without it a new one
#                         with one random key is made on first use only
#     --redis FILE        the password of the Redis ACL user `edge` (overlay `shared`)
#     --admin-token FILE  the cockpit's bearer token; without it a random one is made on
#                         first use only (read it back with kubectl get secret edge-admin-token)
set -euo pipefail
users="" keys="" redis="" admin=""
while [ $# -gt 0 ]; do
  case $1 in
    --users) users=$2; shift ;;
    --token-keys) keys=$2; shift ;;
    --redis) redis=$2; shift ;;
    --admin-token) admin=$2; shift ;;
    *) echo "secrets.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$users" ] || { echo "secrets.sh: --users FILE is required" >&2; exit 2; }
apply() { # apply NAME KEY=FILE: create or replace the Secret, same name
  kubectl create secret generic "$1" --from-file="$2" --dry-run=client -o yaml | kubectl apply -f -
}
apply edge-app-users "users.yaml=$users"
if [ -n "$keys" ]; then
  apply edge-token-keys "token_keys=$keys"
elif ! kubectl get secret edge-token-keys >/dev/null 2>&1; then
  tmp=$(mktemp)
  kid="k-$(date -u +%Y%m%d)"
  printf 'signing_kid: %s\nkeys:\n  - kid: %s\n    secret: "%s"\n' \
    "$kid" "$kid" "$(head -c 48 /dev/urandom | base64 -w0)" >"$tmp"
  apply edge-token-keys "token_keys=$tmp"
  rm -f "$tmp"
fi
if [ -n "$admin" ]; then
  apply edge-admin-token "admin_token=$admin"
elif ! kubectl get secret edge-admin-token >/dev/null 2>&1; then
  tmp=$(mktemp)
  head -c 32 /dev/urandom | base64 -w0 >"$tmp"
  apply edge-admin-token "admin_token=$tmp"
  rm -f "$tmp"
fi
[ -z "$redis" ] || apply edge-redis-password "redis_password=$redis"
