#!/usr/bin/env bash
# Container tests on the real Docker engine: gateway + app from compose.yaml with its
# hardening, in images built here from local binaries (this machine cannot pull images).
# The test images are FROM scratch + the binary + the shared libraries ldd names, with
# the runtime-contract lines (USER, ENTRYPOINT, CMD, HEALTHCHECK…) copied verbatim from
# the shipped Dockerfiles, plus a static busybox at /busybox used only to probe from
# inside. Usage: tests/containers/run.sh [--keep]   (needs docker + docker-compose).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}

# Static: the shipped compose file (all six services) and the test overlay parse and validate.
if command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; then
  compose -f compose.yaml config -q
  TEST_CONFIG_DIR=/nonexistent compose -f compose.yaml -f tests/containers/compose.test.yaml config -q
  echo "ok   compose.yaml validates (compose config)"
else
  skip_reason="no docker compose / docker-compose"
fi
if [ -z "${skip_reason:-}" ] && ! docker info >/dev/null 2>&1; then
  skip_reason="no Docker engine"
fi
busybox=${BUSYBOX:-/bin/busybox}
if [ -z "${skip_reason:-}" ] && [ ! -x "$busybox" ]; then
  skip_reason="no static busybox at $busybox for the in-container probes (as root, or prefix sudo: apt-get install -y busybox-static)"
fi
if [ -n "${skip_reason:-}" ]; then
  printf '\n%s\n#  SKIPPED: container tests — %s here.\n%s\n\n' \
    '########################################################' "$skip_reason" \
    '########################################################' >&2
  exit 0
fi

project=edgetest
work=$root/target/container-test
rm -rf "$work" && mkdir -p "$work"
failures=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
# check, check_not, wait_healthy, hardening_checks (shared with tests/images/build-shipped.sh)
. tests/containers/hardening.sh


# ---- images -------------------------------------------------------------------------
cargo build --locked -p gateway -p app
profile_dir=$root/target/debug

# build_image NAME BINARY DOCKERFILE [EXTRA_DOCKERFILE_LINES]
build_image() {
  local name=$1 bin=$2 shipped=$3 extra=${4:-}
  local ctx=$work/$name
  mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/data"
  cp "$profile_dir/$bin" "$ctx/rootfs/usr/local/bin/$bin"
  cp "$busybox" "$ctx/rootfs/busybox"
  # The account files distroless ships (docker cp looks the image's user up in them).
  mkdir -p "$ctx/rootfs/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
  # The dynamic loader and every library it resolves, at the same paths.
  ldd "$profile_dir/$bin" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  {
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    printf '%b' "$extra"
    # Everything after the marker in the shipped Dockerfile: the runtime contract.
    sed -n '/^# ---- runtime contract/,$p' "$shipped" | tail -n +2
  } >"$ctx/Dockerfile"
  docker build -q -t "$name:test" "$ctx" >/dev/null
}
build_image edge-gateway gateway gateway/Dockerfile
build_image edge-app app app/Dockerfile 'COPY --chown=65532:65532 data/ /data/\n'
pass "test images built from local binaries"

# ---- stack --------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
export TEST_CONFIG_DIR=$work/config
export TOKEN_KEYS_FILE=$work/token_keys.yaml
export GATEWAY_PUBLISH=127.0.0.1:$port
export APP_DATA_VOLUME=${project}-app-data
export EDGE_VERSION=test
mkdir -p "$TEST_CONFIG_DIR"
cp config/gateway.yaml config/app.yaml config/users.yaml "$TEST_CONFIG_DIR/"
printf 'signing_kid: ct-1\nkeys:\n  - kid: ct-1\n    secret: "%s"\n' \
  "$(head -c 48 /dev/urandom | base64 -w0)" >"$TOKEN_KEYS_FILE"
chmod 0644 "$TOKEN_KEYS_FILE"
# compose.yaml names the Grafana secret too; it must exist even though Grafana isn't started.
mkdir -p secrets && [ -e secrets/grafana_admin_password ] || {
  (umask 077 && head -c 18 /dev/urandom | base64 -w0 >secrets/grafana_admin_password)
}
# The gateway's admin token (admin.token_file in config/gateway.yaml): a scratch one.
export ADMIN_TOKEN_FILE=$work/admin_token
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ADMIN_TOKEN_FILE"
chmod 0644 "$ADMIN_TOKEN_FILE"
# The gateway service lists the Redis secret (read only with shared_limits on): a scratch one.
export REDIS_PASSWORD_FILE=$work/redis_password
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$REDIS_PASSWORD_FILE"

dc() { compose -p "$project" -f compose.yaml -f tests/containers/compose.test.yaml "$@"; }
cleanup() {
  if [ "${1:-}" != keep ]; then
    docker rm -f edge-restore >/dev/null 2>&1 || true
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    docker volume rm "$APP_DATA_VOLUME" >/dev/null 2>&1 || true
  fi
}
[ "${1:-}" = --keep ] && trap 'cleanup keep' EXIT || trap cleanup EXIT
cleanup
dc up -d --no-build gateway app

cid() { dc ps -q "$1"; }
check "app becomes healthy (its own healthcheck)" wait_healthy app 60
check "gateway becomes healthy (its own healthcheck)" wait_healthy gateway 60

# ---- hardening, from docker inspect and the live processes ----------------------------
for svc in gateway app; do hardening_checks "$svc" "$(cid "$svc")"; done
data_volume_checks "$(cid app)"

# ---- network: the app is reachable only through the gateway ----------------------------
app_c=$(cid app)
[ -z "$(docker inspect -f '{{range $p, $b := .NetworkSettings.Ports}}{{if $b}}{{$p}}{{end}}{{end}}' "$app_c")" ] \
  && pass "app: no published port" || fail "app: publishes a port"
app_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$app_c")
# (The Docker host itself can always reach a container's bridge address; "outside" means
# other machines — nothing is published — and containers on the public network.)
edge_net=$(docker inspect -f '{{range $n, $_ := .NetworkSettings.Networks}}{{$n}} {{end}}' "$(cid gateway)" | tr ' ' '\n' | grep '_edge$')
gw_edge_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$edge_net\").IPAddress}}" "$(cid gateway)")
# Probes use the binaries' own `healthcheck` (exit 0 only on a 200), not busybox: its static
# resolver/wget crashes in these images. Each "cannot" has a positive control beside it.
on_edge() { docker run --rm --network "$edge_net" --entrypoint /usr/local/bin/gateway edge-gateway:test healthcheck --url "$1"; }
check "control: a container on the public network reaches the gateway's admin port there" on_edge "http://$gw_edge_ip:9901/healthz"
check_not "a container on the public network cannot reach the app" on_edge "http://$app_ip:8081/healthz"
check "the gateway container reaches the app on the internal network" \
  docker exec "$(cid gateway)" gateway healthcheck --url "http://$app_ip:8081/healthz"
check_not "the app has no route out of the internal network (to the gateway's public side)" \
  docker exec "$app_c" app healthcheck --url "http://$gw_edge_ip:9901/healthz"

# ---- end to end through the published port ---------------------------------------------
login() {
  curl -sS -m 5 -X POST "$base/v1/auth/token" -H 'content-type: application/json' \
    -d '{"username":"alice","password":"alice-dev-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
token=$(login) && [ -n "$token" ] && pass "login through the gateway (token signed with the compose secret)" || fail "login"
auth=(-H "authorization: Bearer $token")
doc_body="survives restart $(date +%s%N)"
doc_id=$(curl -sS -m 5 -X POST "$base/v1/documents?name=restart.txt" "${auth[@]}" -H 'content-type: text/plain' \
  --data-binary "$doc_body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') \
  && pass "upload through the gateway ($doc_id)" || fail "upload"
[ "$(curl -sS -m 5 "$base/v1/documents/$doc_id" "${auth[@]}")" = "$doc_body" ] && pass "get returns the upload" || fail "get after upload"

docker restart "$app_c" >/dev/null
check "app healthy again after docker restart" wait_healthy app 60
got=""
for _ in $(seq 20); do # the gateway's probe notices the app is back within a second or two
  got=$(curl -sS -m 5 "$base/v1/documents/$doc_id" "${auth[@]}" || true)
  [ "$got" = "$doc_body" ] && break
  sleep 0.5
done
[ "$got" = "$doc_body" ] && pass "the upload survives docker restart app" || fail "after restart got: $got"

# ---- hot reload through the read-only directory mount -------------------------------------
policy() { curl -sS -m 5 -o /dev/null -D - "$base/v1/documents" "${auth[@]}" | tr -d '\r' | grep -i '^ratelimit-policy:' || true; }
before=$(policy)
# An editor's save: write a new file and rename it over the old one (a new inode).
sed '/name: documents-per-user/,/burst:/{s/rate: 100\/min/rate: 90\/min/;s/burst: 100/burst: 90/}' "$TEST_CONFIG_DIR/gateway.yaml" >"$TEST_CONFIG_DIR/.gateway.yaml.new"
mv "$TEST_CONFIG_DIR/.gateway.yaml.new" "$TEST_CONFIG_DIR/gateway.yaml"
after=""
for _ in $(seq 20); do
  after=$(policy)
  [ -n "$after" ] && [ "$after" != "$before" ] && break
  sleep 0.5
done
echo "$after" | grep -q "q=90" && pass "a rename-style edit of the mounted config reloads ($before → $after)" \
  || fail "no reload seen: before '$before' after '$after'"
# ---- RUNBOOK.md drills: the runbook's commands, run as written ----------------------------
cfg=$TEST_CONFIG_DIR
[ "$(dc ps | grep -c '(healthy)')" -ge 2 ] && pass "runbook: compose ps shows gateway and app healthy" || fail "compose ps: $(dc ps)"
check "runbook: gateway readyz healthcheck" docker exec "$(cid gateway)" gateway healthcheck --url http://127.0.0.1:9901/readyz
check "runbook: app healthcheck" docker exec "$(cid app)" app healthcheck

# Change a rate limit safely: backup, candidate, check inside the container, apply, roll back.
cp "$cfg/gateway.yaml" "$cfg/gateway.yaml.bak"
cp "$cfg/gateway.yaml" "$cfg/gateway.next.yaml"
sed -i '/name: documents-per-user/,/burst:/{s/rate: 90\/min/rate: 80\/min/;s/burst: 90/burst: 80/}' "$cfg/gateway.next.yaml"
check "runbook: check-config accepts the candidate" docker exec "$(cid gateway)" gateway check-config /etc/gateway/gateway.next.yaml
printf 'rate_limits: { policies: [ { name: x, key: ip, rate: 1/fortnight, burst: 1 } ] }\n' >"$cfg/broken.yaml"
out=$(docker exec "$(cid gateway)" gateway check-config /etc/gateway/broken.yaml 2>&1 || true)
echo "$out" | grep -q 'broken.yaml:1' && echo "$out" | grep -q 'rate' \
  && pass "runbook: check-config names file:line: field of a broken candidate ($out)" || fail "check-config on broken: $out"
wait_policy() { # wait_policy Q — until RateLimit-Policy shows q=Q
  for _ in $(seq 20); do policy | grep -q "q=$1;" && return 0; sleep 0.5; done
  return 1
}
cp "$cfg/gateway.next.yaml" "$cfg/gateway.yaml"
check "runbook: applying the candidate reloads it (q=80)" wait_policy 80
cp "$cfg/broken.yaml" "$cfg/gateway.yaml"
wait_log() { # wait_log TEXT — until the gateway has logged TEXT (bounded: the watcher polls ~1 s)
  for _ in $(seq 40); do docker logs "$(cid gateway)" 2>&1 | grep -q "$1" && return 0; sleep 0.5; done
  return 1
}
# The refusal in the log proves the broken file was read; only then is "the config stays" meaningful.
check "runbook: the refusal is logged (ConfigReloadFailed's LogQL line)" wait_log 'config reload rejected'
check "runbook: a broken live edit is refused, the running config stays (q=80)" wait_policy 80
cp "$cfg/gateway.yaml.bak" "$cfg/gateway.yaml"
check "runbook: rolling back restores the previous limit (q=90)" wait_policy 90

# Block an abusive client or user.
bob=$(curl -sS -m 5 -X POST "$base/v1/auth/token" -H 'content-type: application/json' \
  -d '{"username":"bob","password":"bob-dev-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
status() { curl -sS -m 5 -o /dev/null -w '%{http_code}' "$@"; }
# wait_status WANT CURL_ARGS… — polls (≤ 10 s) until the status is WANT; prints the last one.
wait_status() {
  local want=$1 got=""; shift
  for _ in $(seq 20); do got=$(status "$@"); [ "$got" = "$want" ] && break; sleep 0.5; done
  echo "$got"
}
sed 's/^  users: \[\]  .*/  users: [u-bob]/' "$cfg/gateway.yaml.bak" >"$cfg/gateway.yaml"
blocked=$(wait_status 403 "$base/v1/documents" -H "authorization: Bearer $bob")
[ "$blocked" = 403 ] && [ "$(status "$base/v1/documents" "${auth[@]}")" = 200 ] \
  && pass "runbook: blocking u-bob answers him 403, alice still 200" || fail "block user: bob $blocked"
peer=$(dc logs --tail 5 gateway 2>&1 | grep -o '"peer":"[^"]*"' | tail -1 | cut -d'"' -f4)
sed "s|^  clients: \[\]  .*|  clients: [$peer/32]|" "$cfg/gateway.yaml.bak" >"$cfg/gateway.yaml"
blocked=$(wait_status 403 "$base/v1/documents" "${auth[@]}")
[ "$blocked" = 403 ] && pass "runbook: blocking client $peer answers 403" || fail "block client $peer: $blocked"
cp "$cfg/gateway.yaml.bak" "$cfg/gateway.yaml"
unblocked=$(wait_status 200 "$base/v1/documents" "${auth[@]}")
[ "$unblocked" = 200 ] && pass "runbook: removing the entry unblocks" || fail "unblock: $unblocked"

# Rotate the token key without logging anyone out.
keys=$TOKEN_KEYS_FILE
kid_of() { python3 -c 'import base64,json,sys; h=sys.argv[1].split(".")[0]; print(json.loads(base64.urlsafe_b64decode(h+"="*(-len(h)%4)))["kid"])' "$1"; }
old_token=$token
new_secret=$(head -c 48 /dev/urandom | base64 -w0)
old_secret=$(sed -n 's/.*secret: "\(.*\)"/\1/p' "$keys")
cp "$keys" "$keys.bak"
printf 'signing_kid: ct-1\nkeys:\n  - kid: ct-1\n    secret: "%s"\n  - kid: ct-2\n    secret: "%s"\n' "$old_secret" "$new_secret" >"$(dirname "$keys")/token_keys.next.yaml"
cp "$(dirname "$keys")/token_keys.next.yaml" "$keys"
dc restart app >/dev/null 2>&1 && wait_healthy app 60
printf 'signing_kid: ct-2\nkeys:\n  - kid: ct-1\n    secret: "%s"\n  - kid: ct-2\n    secret: "%s"\n' "$old_secret" "$new_secret" >"$keys"
dc restart app >/dev/null 2>&1 && wait_healthy app 60
sleep 2 # the gateway's key-file poll
new_token=$(login)
[ "$(kid_of "$new_token")" = ct-2 ] && pass "runbook: after the switch new tokens use the new kid" || fail "new token kid $(kid_of "$new_token")"
[ "$(status "$base/v1/documents" -H "authorization: Bearer $old_token")" = 200 ] \
  && pass "runbook: a token issued before the rotation still works" || fail "old token refused mid-rotation"
[ "$(status "$base/v1/documents" -H "authorization: Bearer $new_token")" = 200 ] \
  && pass "runbook: the new token works through the gateway" || fail "new token refused"
printf 'signing_kid: ct-2\nkeys:\n  - kid: ct-2\n    secret: "%s"\n' "$new_secret" >"$keys"
dc restart app >/dev/null 2>&1 && wait_healthy app 60
gone=$(wait_status 401 "$base/v1/documents" -H "authorization: Bearer $old_token")
[ "$gone" = 401 ] && [ "$(status "$base/v1/documents" -H "authorization: Bearer $new_token")" = 200 ] \
  && pass "runbook: after removing the old key its tokens get 401, new ones work" || fail "after removal: old $gone"
token=$new_token
auth=(-H "authorization: Bearer $token")

# Back up and restore the documents volume.
backup=$work/documents-backup.tar
docker cp "$(cid app)":/data - >"$backup"
kept_id=$doc_id
later_id=$(curl -sS -m 5 -X POST "$base/v1/documents?name=later.txt" "${auth[@]}" -H 'content-type: text/plain' \
  --data-binary 'after the backup' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sS -m 5 -X DELETE "$base/v1/documents/$kept_id" "${auth[@]}" >/dev/null
dc rm -s -f app >/dev/null 2>&1
docker volume rm "$APP_DATA_VOLUME" >/dev/null
dc up --no-start app >/dev/null 2>&1
docker create --name edge-restore -v "$APP_DATA_VOLUME":/data "edge-app:$EDGE_VERSION" >/dev/null
docker cp - edge-restore:/ <"$backup"
docker rm edge-restore >/dev/null
dc start app >/dev/null 2>&1
check "runbook: app healthy after restore" wait_healthy app 60
restored=""
for _ in $(seq 40); do restored=$(curl -sS -m 5 "$base/v1/documents/$kept_id" "${auth[@]}" || true); [ "$restored" = "$doc_body" ] && break; sleep 0.5; done
[ "$restored" = "$doc_body" ] && [ "$(status "$base/v1/documents/$later_id" "${auth[@]}")" = 404 ] \
  && pass "runbook: restore brings back the backed-up document and drops later ones" || fail "restore: got '$restored'"

# Roll back a service to an earlier tagged image.
docker tag edge-gateway:test edge-gateway:prev
EDGE_VERSION=prev dc up -d --no-build --no-deps gateway >/dev/null 2>&1
[ "$(docker inspect -f '{{.Config.Image}}' "$(cid gateway)")" = edge-gateway:prev ] && wait_healthy gateway 60 \
  && pass "runbook: EDGE_VERSION=prev up -d --no-build --no-deps gateway runs the earlier image" || fail "rollback"
dc up -d --no-build --no-deps gateway >/dev/null 2>&1
check "gateway back on the current image and healthy" wait_healthy gateway 60
docker rmi edge-gateway:prev >/dev/null 2>&1 || true

# ---- docker stop drains the gateway --------------------------------------------------------
gw_c=$(cid gateway)
# A 4 s trickled upload is in flight when the stop arrives; it must complete (201) and the
# gateway must then exit 0 on its own (after timeouts.shutdown_delay, 5 s), well inside
# stop_grace_period (25 s).
python3 - "$port" "$token" >"$work/slow-upload.out" 2>&1 <<'PY' &
import socket, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
body = b"x" * 4000
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall((f"POST /v1/documents?name=slow.txt HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {token}\r\n"
           f"content-type: text/plain\r\n"
           f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode())
for i in range(0, len(body), 500):
    s.sendall(body[i:i + 500]); time.sleep(0.5)
print(s.recv(64).decode(errors="replace").splitlines()[0])
PY
slow_pid=$!
sleep 1
t0=$(date +%s.%N)
docker stop -t 25 "$gw_c" >/dev/null
took=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
wait $slow_pid || true
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$gw_c")
grep -q '^HTTP/1.1 201' "$work/slow-upload.out" && pass "in-flight upload completed during stop ($(cat "$work/slow-upload.out"))" \
  || fail "in-flight upload: $(cat "$work/slow-upload.out")"
[ "$exit_code" = 0 ] && python3 -c "import sys; sys.exit(0 if $took < 15 else 1)" \
  && pass "docker stop gateway: drained and exited 0 in ${took}s (grace 25 s)" \
  || fail "docker stop gateway: exit $exit_code after ${took}s"

# ---- RUNBOOK "Turn on TLS" and "Renew the certificate", as written ---------------------------
# The test's compose files plus compose.tls.yaml (the runbook's COMPOSE_FILE), a self-signed pair.
dct() { dc -f compose.tls.yaml "$@"; }
tls_t0=$(date +%s)
export TLS_CERT_FILE=$work/tls_cert.pem TLS_KEY_FILE=$work/tls_key.pem
scripts/self-signed.sh "$TLS_CERT_FILE" "$TLS_KEY_FILE" 30 2>/dev/null
cp config/gateway.tls.yaml "$TEST_CONFIG_DIR/"
check "runbook: check-config validates the pair before going live (compose run)" \
  dct run --rm --no-deps gateway check-config /etc/gateway/gateway.tls.yaml
dct up -d --no-build --no-deps gateway >/dev/null 2>&1
check "gateway healthy with TLS (secrets readable by uid 65532 under the same hardening)" wait_healthy gateway 60
hardening_checks gateway "$(cid gateway)"
served() { openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout "$@"; }
served -subject -enddate | grep -q 'CN *= *localhost' && pass "runbook: the handshake shows the configured certificate" \
  || fail "served certificate: $(served -subject 2>&1)"
https() { curl -sS -m 5 --cacert "$TLS_CERT_FILE" "$@" -o /dev/null -w '%{http_version} %{http_code}' "https://localhost:$port/v1/documents"; }
[ "$(https --http2)" = "2 401" ] && [ "$(https --http1.1)" = "1.1 401" ] \
  && pass "runbook: curl --http2 / --http1.1 over TLS answer 2 401 / 1.1 401" || fail "https: $(https --http2) / $(https --http1.1)"
check_not "runbook: plain http:// to the TLS port gets no HTTP answer" curl -sS -m 5 -o /dev/null "http://127.0.0.1:$port/v1/documents"
log_count() { docker logs "$(cid gateway)" 2>&1 | grep -c "$1" || true; }
wait_log_count() { # TEXT N — until TEXT was logged more than N times (the watcher polls ~1 s)
  for _ in $(seq 40); do [ "$(log_count "$1")" -gt "$2" ] && return 0; sleep 0.5; done
  return 1
}
# Renew: a new pair checked on the host (step 2), written in place (step 3), verified (step 4).
next=$work/tls_cert.next.pem next_key=$work/tls_key.next.pem
scripts/self-signed.sh "$next" "$next_key" 60 2>/dev/null
openssl x509 -in "$next" -noout -enddate -checkend 1209600 | grep -q 'will not expire' \
  && [ "$(openssl x509 -in "$next" -noout -pubkey | sha256sum)" = "$(openssl pkey -in "$next_key" -pubout | sha256sum)" ] \
  && pass "runbook: the host-side checks accept the new pair" || fail "host-side pair checks"
old_serial=$(served -serial) reloaded=$(log_count 'certificate reloaded')
cp "$next" "$TLS_CERT_FILE" && cp "$next_key" "$TLS_KEY_FILE"
check "runbook: the renewal is logged (certificate reloaded)" wait_log_count 'certificate reloaded' "$reloaded"
[ "$(served -serial)" = "$(openssl x509 -in "$next" -noout -serial)" ] && [ "$(served -serial)" != "$old_serial" ] \
  && pass "runbook: a new handshake presents the renewed certificate" || fail "served serial $(served -serial), old $old_serial"
check "runbook: check-config in the running gateway accepts what it serves" \
  docker exec "$(cid gateway)" gateway check-config /etc/gateway/gateway.tls.yaml
reloaded=$(log_count 'certificate reloaded')
dct kill -s HUP gateway >/dev/null 2>&1
check "runbook: kill -s HUP gateway reloads the pair at once" wait_log_count 'certificate reloaded' "$reloaded"
# A bad renewal (the key of another pair): refused, and the renewed certificate keeps serving.
rejected=$(log_count 'certificate reload rejected') serving=$(served -serial)
scripts/self-signed.sh "$work/other.pem" "$work/other.key" 30 2>/dev/null
cp "$work/other.key" "$TLS_KEY_FILE"
check "runbook: a mismatched pair is refused (TlsCertificateReloadFailed's LogQL line)" wait_log_count 'certificate reload rejected' "$rejected"
[ "$(served -serial)" = "$serving" ] && pass "runbook: after the refusal the previous certificate still serves" || fail "serial changed after a refused pair"
echo "     (TLS drills took $(($(date +%s) - tls_t0)) s)"

if [ "$failures" -gt 0 ]; then
  echo "container tests: $failures FAILED" >&2
  dc logs --tail 30 gateway app >&2 || true
  exit 1
fi
echo "container tests: all passed"
