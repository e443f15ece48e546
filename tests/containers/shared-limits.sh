#!/usr/bin/env bash
# Shared rate limits on the real Docker engine: 3 gateway replicas + Redis + app, in hardened
# containers on networks this test creates. Requests spread round-robin are limited as one;
# `docker network disconnect` cuts Redis off from one replica: that replica degrades
# (gateway_shared_limits_up 0 on its admin port), the others stay in sync, no request fails;
# reconnecting it brings it back in sync.
# Images are FROM scratch + local binaries + the libraries ldd names (like run.sh); the Redis
# image is Debian's /usr/bin/redis-server started with compose.yaml's own entrypoint and
# healthcheck (busybox plays /bin/sh). Usage: tests/containers/shared-limits.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
failures=0
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
skip() {
  printf '\n%s\n#  SKIPPED: shared-limits container test — %s here.\n%s\n\n' \
    '########################################################' "$1" \
    '########################################################' >&2
  exit 0
}

work=$root/target/container-shared
rm -rf "$work" && mkdir -p "$work"

# ---- static: the shipped profile, Redis hardening, the shared config --------------------------
if command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; then
  # Resolved with the profile on, as stack-up.sh --shared runs it.
  COMPOSE_PROFILES=shared GATEWAY_CONFIG=gateway.shared.yaml REDIS_PASSWORD_FILE=/nonexistent REDIS_ADMIN_PASSWORD_FILE=/nonexistent \
    compose -f compose.yaml config >"$work/compose.resolved.yaml"
  pass "compose.yaml with profile shared validates (compose config)"
else
  skip "no docker compose / docker-compose"
fi
python3 - "$work/compose.resolved.yaml" config/gateway.yaml config/gateway.shared.yaml redis/redis.conf <<'PY' || failures=$((failures + 1))
import sys, yaml
resolved, plain, shared, conf = sys.argv[1:]
c = yaml.safe_load(open(resolved))
bad = []
def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok: bad.append(what)
r = c["services"]["redis"]
check(":" in r["image"] and not r["image"].endswith(":latest"), f"redis: pinned image {r['image']}")
check(r.get("user", "0").split(":")[0] not in ("", "0", "root"), f"redis: non-root user {r.get('user')}")
check(r.get("read_only") is True, "redis: read-only root")
check(r.get("cap_drop") == ["ALL"] and not r.get("cap_add"), "redis: cap_drop ALL, nothing added")
check("no-new-privileges:true" in r.get("security_opt", []), "redis: no-new-privileges")
check(int(r.get("pids_limit", 0)) > 0 and r.get("mem_limit"), "redis: pids and memory limits")
check(sorted(r["networks"]) == ["backend"], f"redis: backend network only {sorted(r['networks'])}")
check(c["networks"]["backend"].get("internal") is True, "backend network is internal")
check(not r.get("ports"), "redis: no published port")
check(r.get("profiles") == ["shared"], "redis: only in profile shared")
check("healthcheck" in r, "redis: healthcheck")
check(any(s.get("source", s) == "redis_password" for s in r.get("secrets", [])), "redis: password from the secret")
check(yaml.safe_load(open(shared))["shared_limits"].get("username") == "edge", "gateway.shared.yaml logs in as the ACL user edge, not default")
check(not r.get("environment"), "redis: no environment")
check("requirepass" not in " ".join(r.get("command") or []) or "$(cat /run/secrets/" in " ".join(r.get("entrypoint")), "redis: no password literal on the command line")
directives = {}
for line in open(conf):
    line = line.split("#", 1)[0].strip()
    if line:
        k, _, v = line.partition(" ")
        directives[k] = v.strip()
for k, v in {"maxmemory": "256mb", "maxmemory-policy": "volatile-ttl", "save": '""', "appendonly": "no"}.items():
    check(directives.get(k) == v, f"redis.conf: {k} {directives.get(k)}")
g, rep = c["services"]["gateway"], c["services"]["gateway-replica"]
check(g["command"][-1] == "/etc/gateway/gateway.shared.yaml" and rep["command"] == g["command"],
      "every gateway runs gateway.shared.yaml in the shared profile")
check("redis" in rep.get("depends_on", {}) and rep.get("scale", 1) >= 2, "replicas depend on redis, 2+ of them")
ports = [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p.get('published', '')}:{p['target']}" for p in rep.get("ports", [])]
check(ports and all(p.startswith("127.0.0.1:") for p in ports), f"replicas publish on loopback only {ports}")
# The shared config is the plain one plus shared_limits (and per-policy shared modes).
a, b = yaml.safe_load(open(plain)), yaml.safe_load(open(shared))
check("shared_limits" not in a and "shared_limits" in b, "gateway.yaml has no shared_limits; gateway.shared.yaml has")
b.pop("shared_limits", None)
for p in b.get("rate_limits", {}).get("policies", []):
    p.pop("shared", None); p.pop("on_unavailable", None)
check(a == b, "gateway.shared.yaml is gateway.yaml plus shared_limits, nothing else")
sys.exit(1 if bad else 0)
PY

docker info >/dev/null 2>&1 || skip "no Docker engine"
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || skip "no static busybox at $busybox (apt-get install busybox-static)"
command -v redis-server >/dev/null || skip "no redis-server (apt-get install redis-server)"

# ---- images ----------------------------------------------------------------------------------
cargo build --locked -p gateway -p app
bin_dir=$root/target/debug
# scratch_image NAME EXTRA_DOCKERFILE_LINES SRC:DEST… — FROM scratch + each file at DEST +
# every library ldd names for it (same paths) + busybox at /busybox, and the account files.
scratch_image() {
  local name=$1 extra=$2; shift 2
  local ctx=$work/img-$name spec src dest
  mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/bin" "$ctx/data"
  for spec in "$@"; do
    src=${spec%%:*} dest=${spec#*:}
    mkdir -p "$ctx/rootfs$(dirname "$dest")"
    cp -L "$src" "$ctx/rootfs$dest"
    ldd "$src" | grep -o '/[^ ]*' | while read -r lib; do
      mkdir -p "$ctx/rootfs$(dirname "$lib")"
      cp -L "$lib" "$ctx/rootfs$lib"
    done
  done
  cp "$busybox" "$ctx/rootfs/busybox"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\nredis:x:999:1000::/data:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\nredis:x:1000:\n' >"$ctx/rootfs/etc/group"
  { echo "FROM scratch"; echo "COPY rootfs/ /"; printf '%b' "$extra"; } >"$ctx/Dockerfile"
  docker build -q -t "$name:test" "$ctx" >/dev/null
}
# The shipped Dockerfiles' runtime contract (USER, ENTRYPOINT, CMD, HEALTHCHECK…).
contract() { sed -n '/^# ---- runtime contract/,$p' "$1" | tail -n +2 | sed 's/$/\\n/' | tr -d '\n'; }
scratch_image edge-shared-gateway "$(contract gateway/Dockerfile)" "$bin_dir/gateway:/usr/local/bin/gateway"
scratch_image edge-shared-app "COPY --chown=65532:65532 data/ /data/\n$(contract app/Dockerfile)" "$bin_dir/app:/usr/local/bin/app"
# Redis as the official image lays it out: redis-server/redis-cli on PATH, a /bin/sh (busybox
# applets through symlinks) for compose.yaml's entrypoint and healthcheck.
scratch_image edge-shared-redis 'RUN ["/busybox", "--install", "-s", "/bin"]\nENV PATH=/usr/local/bin:/usr/bin:/bin\nUSER 999:1000\nWORKDIR /data\n' \
  /usr/bin/redis-server:/usr/local/bin/redis-server /usr/bin/redis-cli:/usr/local/bin/redis-cli
pass "test images built from local binaries (edge-shared-{gateway,app,redis}:test)"

# ---- containers and networks -----------------------------------------------------------------
net_front=edge-shared-front   # the gateways' public side (published on loopback)
net_app=edge-shared-app       # internal: gateways ↔ app
net_redis=edge-shared-redis   # internal: gateways ↔ Redis (the one we cut)
gateways=(edge-shared-gw1 edge-shared-gw2 edge-shared-gw3)
cleanup() {
  [ "${1:-}" = keep ] && return 0
  docker rm -f "${gateways[@]}" edge-shared-app edge-shared-redis >/dev/null 2>&1 || true
  docker network rm $net_front $net_app $net_redis >/dev/null 2>&1 || true
  docker rmi edge-shared-gateway:test edge-shared-app:test edge-shared-redis:test >/dev/null 2>&1 || true
}
[ "${1:-}" = --keep ] && trap 'cleanup keep' EXIT || trap cleanup EXIT
docker rm -f "${gateways[@]}" edge-shared-app edge-shared-redis >/dev/null 2>&1 || true
docker network rm $net_front $net_app $net_redis >/dev/null 2>&1 || true
docker network create $net_front >/dev/null
docker network create --internal $net_app >/dev/null
docker network create --internal $net_redis >/dev/null

secrets=$work/secrets && mkdir -p "$secrets"
printf 'signing_kid: cs-1\nkeys:\n  - kid: cs-1\n    secret: "%s"\n' "$(head -c 48 /dev/urandom | base64 -w0)" >"$secrets/token_keys"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/redis_password"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$secrets/redis_admin_password"
chmod 0644 "$secrets"/*
hardened=(--read-only --tmpfs /tmp:size=16m,mode=1777 --cap-drop ALL --security-opt no-new-privileges:true)

# Redis with compose.yaml's entrypoint, healthcheck, tmpfs, user and limits.
readarray -d '' redis_entry < <(python3 -c 'import sys,yaml; [print(x.replace("$$", "$"), end="\0") for x in yaml.safe_load(open(sys.argv[1]))["services"]["redis"]["entrypoint"]]' "$work/compose.resolved.yaml")
redis_health=$(python3 -c 'import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))["services"]["redis"]["healthcheck"]["test"][1])' "$work/compose.resolved.yaml" | sed 's/\$\$/$/g')
docker run -d --name edge-shared-redis --network $net_redis --network-alias redis \
  "${hardened[@]}" --tmpfs /data:size=16m,mode=0700,uid=999,gid=1000 --user 999:1000 \
  --pids-limit 64 --memory 384m --cpus 1 \
  -v "$root/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro" \
  -v "$root/redis/edge-user.acl:/usr/local/etc/redis/edge-user.acl:ro" \
  -v "$secrets/redis_password:/run/secrets/redis_password:ro" \
  -v "$secrets/redis_admin_password:/run/secrets/redis_admin_password:ro" \
  --health-cmd "$redis_health" --health-interval 2s --health-timeout 3s --health-retries 3 \
  --entrypoint "${redis_entry[0]}" edge-shared-redis:test "${redis_entry[@]:1}" >/dev/null

docker run -d --name edge-shared-app --network $net_app --network-alias app "${hardened[@]}" \
  --user 65532:65532 --pids-limit 256 --memory 512m \
  -v "$root/config/app.yaml:/etc/app/app.yaml:ro" -v "$root/config/users.yaml:/etc/app/users.yaml:ro" \
  -v "$secrets/token_keys:/run/secrets/token_keys:ro" --tmpfs /data:size=16m,uid=65532,gid=65532 \
  edge-shared-app:test >/dev/null

# One user (every request comes from the bridge's address), 60/min burst 30, shared.
cfg=$work/gateway.yaml
cat >"$cfg" <<'YAML'
listen: 0.0.0.0:8080
admin_listen: 0.0.0.0:9901
upstream: app:8081
token_key_file: /run/secrets/token_keys
routes: ["/v1/"]
shared_limits:
  redis: redis://redis:6379/0
  username: edge
  password_file: /run/secrets/redis_password
  key_prefix: edge
  sync_interval: 250ms
  on_unavailable: share
rate_limits:
  policies:
    - { name: shared-per-ip, key: ip, rate: 60/min, burst: 30 }
YAML
chmod 0644 "$cfg"
for gw in "${gateways[@]}"; do
  docker create --name "$gw" --network $net_front -p 127.0.0.1::8080 -p 127.0.0.1::9901 \
    "${hardened[@]}" --user 65532:65532 --pids-limit 256 --memory 512m \
    -v "$cfg:/etc/gateway/gateway.yaml:ro" \
    -v "$secrets/token_keys:/run/secrets/token_keys:ro" \
    -v "$secrets/redis_password:/run/secrets/redis_password:ro" \
    edge-shared-gateway:test >/dev/null
  docker network connect $net_app "$gw"
  docker network connect $net_redis "$gw"
  docker start "$gw" >/dev/null
done

port_of() { docker port "$1" "$2/tcp" | head -1 | sed 's/.*://'; }
wait_healthy() { # NAME SECONDS
  for _ in $(seq "$(($2 * 2))"); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ] && return 0
    sleep 0.5
  done
  docker logs "$1" 2>&1 | tail -20 >&2
  return 1
}
wait_healthy edge-shared-redis 30 && pass "redis healthy (compose.yaml's healthcheck: authenticated PING)" || fail "redis not healthy"
wait_healthy edge-shared-app 60 && pass "app healthy" || fail "app not healthy"
for gw in "${gateways[@]}"; do
  wait_healthy "$gw" 60 && pass "$gw healthy" || fail "$gw not healthy"
done

# ---- Redis as configured ----------------------------------------------------------------------
rcli() { docker exec edge-shared-redis /bin/sh -c 'REDISCLI_AUTH="$(cat /run/secrets/redis_admin_password)" redis-cli "$@"' sh "$@"; }
[ "$(rcli CONFIG GET maxmemory | tail -1)" = 268435456 ] && [ "$(rcli CONFIG GET maxmemory-policy | tail -1)" = volatile-ttl ] \
  && [ "$(rcli CONFIG GET save | tail -1)" = "" ] && [ "$(rcli CONFIG GET appendonly | tail -1)" = no ] \
  && pass "redis: maxmemory 256mb, volatile-ttl, no RDB, no AOF" || fail "redis config: $(rcli CONFIG GET maxmemory*)"
docker exec edge-shared-redis redis-cli PING 2>&1 | grep -q NOAUTH && pass "redis: unauthenticated PING refused (NOAUTH)" || fail "redis answers without a password"
pw=$(cat "$secrets/redis_password")
docker exec edge-shared-redis /bin/sh -c 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli --user edge CONFIG GET maxmemory' 2>&1 | grep -q NOPERM \
  && pass "redis: the gateways' ACL user edge cannot run CONFIG (NOPERM)" || fail "redis: user edge is not least-privilege"
docker exec edge-shared-redis /bin/sh -c 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli --user edge GET other:key' 2>&1 | grep -q NOPERM \
  && pass "redis: user edge cannot read keys outside edge:*" || fail "redis: user edge reads any key"
docker inspect edge-shared-redis | grep -q "$pw" && fail "redis: the password shows in docker inspect" || pass "redis: the password is not in docker inspect (env, cmd, entrypoint)"
rpid=$(docker inspect -f '{{.State.Pid}}' edge-shared-redis)
if [ -r "/proc/$rpid/status" ]; then
  grep -qE '^Uid:\s+999\s' "/proc/$rpid/status" && grep -qE '^CapEff:\s+0+$' "/proc/$rpid/status" \
    && pass "redis: process runs as uid 999 with no capabilities" || fail "redis: $(grep -E '^(Uid|CapEff)' "/proc/$rpid/status" | tr '\n' ' ')"
  tr '\0' ' ' <"/proc/$rpid/cmdline" | grep -q "$pw" && fail "redis: password on its command line" || pass "redis: no password on its command line"
fi
docker exec edge-shared-redis /busybox touch /etc/probe 2>/dev/null && fail "redis: root fs writable" || pass "redis: read-only root fs"

# ---- every replica in sync ----------------------------------------------------------------------
declare -A admin pub
for gw in "${gateways[@]}"; do admin[$gw]=$(port_of "$gw" 9901); pub[$gw]=$(port_of "$gw" 8080); done
up_of() { # the gauge on one replica's admin port ("" if absent)
  curl -sS -m 2 "http://127.0.0.1:${admin[$1]}/metrics" 2>/dev/null | awk '$1 == "gateway_shared_limits_up" {print $2}'
}
wait_up() { # NAME WANT SECONDS
  local got=""
  for _ in $(seq "$(($3 * 4))"); do got=$(up_of "$1"); [ "$got" = "$2" ] && return 0; sleep 0.25; done
  echo "$1: gateway_shared_limits_up '$got', wanted $2" >&2
  return 1
}
for gw in "${gateways[@]}"; do
  wait_up "$gw" 1 15 && pass "$gw: gateway_shared_limits_up 1" || fail "$gw not in sync"
done

# load SECONDS RPS: round-robin over the replicas' public ports, one keep-alive connection each;
# prints "sent admitted rejected failed max_latency_s" (failed = 5xx, reset, timeout).
load() {
  python3 - "$1" "$2" "${pub[@]}" <<'PY'
import http.client, sys, time
secs, rps, ports = float(sys.argv[1]), float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
conns = [None] * len(ports)
sent = admitted = rejected = failed = 0
worst = 0.0
start = time.monotonic()
while True:
    due = start + sent / rps
    if due - start >= secs:
        break
    time.sleep(max(0.0, due - time.monotonic()))
    i = sent % len(ports)
    sent += 1
    t0 = time.monotonic()
    try:
        if conns[i] is None:
            conns[i] = http.client.HTTPConnection("127.0.0.1", ports[i], timeout=2)
        conns[i].request("GET", "/v1/documents")
        r = conns[i].getresponse(); r.read()
        if r.status == 429: rejected += 1
        elif r.status >= 500: failed += 1
        else: admitted += 1
    except Exception:
        failed += 1
        conns[i] = None
    worst = max(worst, time.monotonic() - t0)
print(sent, admitted, rejected, failed, round(worst, 3))
PY
}

# ---- one limit across three replicas -------------------------------------------------------------
# 60/min burst 30: one gateway admits 30 + ~1/s; three unshared replicas would admit ~90+.
read -r sent admitted rejected failed worst < <(load 4 75)
echo "     round-robin: sent $sent, admitted $admitted, 429 $rejected, failed $failed, slowest ${worst}s"
[ "$failed" = 0 ] && [ "$admitted" -ge 30 ] && [ "$admitted" -le 50 ] \
  && pass "300 requests round-robin over 3 replicas: $admitted admitted (one limit: 30 + ~4; unshared would be ~90)" \
  || fail "round-robin admitted $admitted of $sent (want 30..50), failed $failed"

# ---- cut Redis off from one replica ------------------------------------------------------------
docker network disconnect $net_redis edge-shared-gw3
load 8 20 >"$work/during-cut.out" &
load_pid=$!
wait_up edge-shared-gw3 0 5 && pass "gw3 cut off from Redis: gateway_shared_limits_up 0 (degraded)" || fail "gw3 did not degrade"
# The others stay in sync the whole time: sample them while the cut lasts.
stayed=1
for _ in $(seq 12); do
  for gw in edge-shared-gw1 edge-shared-gw2; do [ "$(up_of $gw)" = 1 ] || stayed=0; done
  sleep 0.5
done
[ "$stayed" = 1 ] && pass "gw1 and gw2 stay in sync (up 1 in every sample over 6 s)" || fail "gw1/gw2 left sync while only gw3 was cut"
wait "$load_pid"
read -r sent admitted rejected failed worst <"$work/during-cut.out"
[ "$failed" = 0 ] && python3 -c "import sys; sys.exit(0 if $worst < 0.5 else 1)" \
  && pass "no request failed during the cut ($sent sent, $admitted admitted, $rejected 429, slowest ${worst}s)" \
  || fail "during the cut: $failed failed of $sent, slowest ${worst}s"
warns=$(docker logs edge-shared-gw3 2>&1 | grep '"level":"WARN"' | grep -ci 'shared\|redis' || true)
[ "$warns" -ge 1 ] && pass "gw3 logged the state change as WARN ($warns line(s))" \
  || fail "no WARN from gw3: $(docker logs edge-shared-gw3 2>&1 | grep -v '"access_log"' | tail -3)"

# ---- reconnect --------------------------------------------------------------------------------
t0=$(date +%s.%N)
docker network connect $net_redis edge-shared-gw3
wait_up edge-shared-gw3 1 10 \
  && pass "gw3 reconnected: back in sync after $(python3 -c "import time; print(round(time.time() - $t0, 1))")s" \
  || fail "gw3 did not recover within 10 s"
for gw in edge-shared-gw1 edge-shared-gw2; do [ "$(up_of $gw)" = 1 ] || fail "$gw not in sync after the reconnect"; done
read -r sent admitted rejected failed worst < <(load 2 20)
[ "$failed" = 0 ] && pass "after the reconnect: $sent sent, none failed" || fail "after the reconnect: $failed failed"

if [ "$failures" -gt 0 ]; then
  echo "shared-limits container test: $failures FAILED" >&2
  for c in "${gateways[@]}" edge-shared-redis; do echo "--- $c" >&2; docker logs --tail 15 "$c" >&2 2>&1 || true; done
  exit 1
fi
echo "shared-limits container test: all passed"
