#!/usr/bin/env bash
# Builds the two shipped Dockerfiles (gateway/Dockerfile, app/Dockerfile) for real, on a
# machine that cannot pull images, and runs the container hardening checks against them.
#
# 1. Local stand-ins for the pinned base images, tagged with the exact pinned names:
#    - rust:1.95-bookworm: Debian bookworm from `debootstrap` (build-essential, ca-certificates,
#      curl, git, pkg-config) with this machine's Rust toolchain copied to /usr/local/rustup,
#      cargo/rustc on PATH from /usr/local/cargo/bin (the official image's layout), and this
#      machine's local CA certificates (/usr/local/share/ca-certificates) for its egress;
#    - gcr.io/distroless/cc-debian12:nonroot: the files of libc6, libgcc-s1, libstdc++6,
#      libgomp1, ca-certificates and netbase from the same bookworm root, distroless's
#      /etc/passwd + group (root, nonroot 65532), USER 65532:65532, no shell.
#    An existing image under a pinned name is reused unless REBUILD_BASES=1 — and never
#    replaced: a real pulled image stays what it is (use REBUILD_BASES=1 only on a machine
#    whose pinned tags are stand-ins).
# 2. A temp copy of each shipped Dockerfile with only what the legacy builder cannot parse
#    stripped (`# syntax=` and `--mount=type=cache,...`), built from the repo root as
#    edge-gateway:h-shipped / edge-app:h-shipped. The shipped files are not touched.
# 3. gateway + app from compose.yaml (with its hardening) on those images, compose project
#    `edgeh-shipped`, and tests/containers/hardening.sh's checks — the ones
#    tests/containers/run.sh runs against its test images. A static busybox is bind-mounted
#    at /busybox by tests/images/compose.shipped.yaml for the write probes; the images
#    themselves stay without a shell.
#
# Cost: a full release build of each binary inside a container, without cargo caches (the
# cache mounts are BuildKit-only). Measured 2026-12-02 on the 2-core dev box, niced, while
# other builds ran (load 10-20): base stand-ins 55 s (debootstrap once: ~4 min), gateway
# image 1916 s, app image 479 s, checks ~30 s; total 2468 s (41 min). That alone exceeds
# CI's 30-minute budget, so it is a documented script, not a stage of scripts/test.sh.
# Needs: docker (+ docker compose or docker-compose), debootstrap, busybox-static, network
# access to the Debian mirror (debootstrap; apt-get inside the gateway build) and crates.io
# (cargo inside the builds). Usage: tests/images/build-shipped.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
t_start=$(date +%s)

builder_image=$(sed -n 's/^FROM \([^ ]*\) AS build$/\1/p' gateway/Dockerfile)
runtime_image=$(sed -n 's/^FROM \([^ ]*\)$/\1/p' gateway/Dockerfile)
for f in app/Dockerfile; do
  [ "$(sed -n 's/^FROM \([^ ]*\) AS build$/\1/p' "$f")" = "$builder_image" ] &&
    [ "$(sed -n 's/^FROM \([^ ]*\)$/\1/p' "$f")" = "$runtime_image" ] ||
    { echo "build-shipped: $f pins other base images than gateway/Dockerfile" >&2; exit 1; }
done
echo "pinned bases: $builder_image, $runtime_image"

missing=()
command -v docker >/dev/null || missing+=(docker)
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -x "${BUSYBOX:-/bin/busybox}" ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ] || ! docker info >/dev/null 2>&1; then
  echo "build-shipped: needs ${missing[*]:-a running Docker engine} (apt-get install -y ${missing[*]:-docker.io})" >&2
  exit 1
fi

work=${SHIPPED_WORK:-$root/target/shipped-images}
mkdir -p "$work"
nice_run() { nice -n 10 "$@"; }
elapsed() { echo $(($(date +%s) - $1)); }

# ---- 1. base-image stand-ins ------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
bookworm=$work/bookworm
make_bookworm() {
  [ -e "$bookworm/.done" ] && return 0
  rm -rf "$bookworm"
  echo "debootstrap bookworm → $bookworm"
  nice_run debootstrap --variant=minbase \
    --include=build-essential,ca-certificates,curl,git,pkg-config,libgomp1,netbase \
    bookworm "$bookworm" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  touch "$bookworm/.done"
}

if [ "${REBUILD_BASES:-0}" = 1 ] || ! have_image "$builder_image"; then
  t=$(date +%s)
  make_bookworm
  toolchain=$(rustc --print sysroot)
  ver=$(rustc --version | awk '{print $2}')
  echo "builder stand-in: bookworm + rustc $ver from $toolchain"
  b=$work/builder-root
  rm -rf "$b" && cp -a "$bookworm" "$b" && rm -f "$b/.done"
  tc=$b/usr/local/rustup/toolchains/$ver-x86_64-unknown-linux-gnu
  mkdir -p "$tc" "$b/usr/local/cargo/bin"
  # The toolchain without its docs (half its size); cargo/rustc/… linked onto PATH.
  (cd "$toolchain" && tar --exclude=./share/doc -cf - .) | tar -C "$tc" -xf -
  for bin in "$tc"/bin/*; do ln -sf "../../rustup/toolchains/$(basename "$tc")/bin/$(basename "$bin")" "$b/usr/local/cargo/bin/"; done
  # This machine's local CAs (its egress to crates.io may be intercepted by one), so cargo in
  # the build trusts what cargo on the host trusts. The real image has Debian's bundle only.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$b/usr/local/share/ca-certificates/"
    chroot "$b" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$b/var/cache/apt/archives"/*.deb "$b/var/lib/apt/lists"/*
  tar -C "$b" -c . | nice_run docker import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change "ENV RUST_VERSION=$ver" --change 'CMD ["bash"]' - "$builder_image" >/dev/null
  rm -rf "$b"
  echo "  $builder_image imported in $(elapsed "$t") s"
else
  echo "reusing $builder_image (REBUILD_BASES=1 to make it again)"
fi

if [ "${REBUILD_BASES:-0}" = 1 ] || ! have_image "$runtime_image"; then
  t=$(date +%s)
  make_bookworm
  r=$work/runtime-root
  rm -rf "$r" && mkdir -p "$r"/{etc,tmp,home/nonroot,root}
  chmod 1777 "$r/tmp"
  chown 65532:65532 "$r/home/nonroot"
  # The merged-/usr links first (/lib64/ld-linux-x86-64.so.2 lives behind /lib64 → usr/lib64),
  # so the package files below land behind them as in bookworm.
  mkdir -p "$r/usr/lib" "$r/usr/lib64" "$r/usr/bin" "$r/usr/sbin"
  for l in lib lib64 bin sbin; do [ -L "$bookworm/$l" ] && cp -a "$bookworm/$l" "$r/$l"; done
  # Every file the packages own (not their docs), copied with its path.
  for pkg in libc6 libgcc-s1 libstdc++6 libgomp1 ca-certificates netbase; do
    chroot "$bookworm" dpkg-query -L "$pkg:amd64" 2>/dev/null || chroot "$bookworm" dpkg-query -L "$pkg"
  done | sort -u | while read -r p; do
    case $p in /usr/share/doc* | /usr/share/man* | /usr/share/lintian* | /usr/share/locale*) continue ;; esac
    [ -d "$bookworm$p" ] && continue   # directories (and links to them) come with their files
    [ -f "$bookworm$p" ] || [ -L "$bookworm$p" ] || continue
    mkdir -p "$r$(dirname "$p")"
    cp -a "$bookworm$p" "$r$p"
  done
  cp -a "$bookworm/etc/ssl" "$r/etc/"   # the ca-certificates bundle update-ca-certificates made
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$r/etc/group"
  printf 'hosts: files dns\n' >"$r/etc/nsswitch.conf"
  [ -e "$r/bin/sh" ] && { echo "build-shipped: runtime stand-in has a shell" >&2; exit 1; }
  tar -C "$r" -c . | docker import \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' - "$runtime_image" >/dev/null
  echo "  $runtime_image imported in $(elapsed "$t") s ($(du -sh "$r" | cut -f1))"
  rm -rf "$r"
else
  echo "reusing $runtime_image (REBUILD_BASES=1 to make it again)"
fi

# ---- 2. the shipped Dockerfiles, legacy-builder copies --------------------------------------
legacy_copy() { # strip the BuildKit-only parts; everything else stays verbatim
  sed -e '/^# syntax=/d' -e 's/^RUN --mount=type=cache,[^ ]* *\\$/RUN \\/' \
    -e '/^ *--mount=type=cache,[^ ]* *\\$/d' "$1"
}
declare -A build_secs
for svc in gateway app; do
  df=$work/$svc.Dockerfile
  legacy_copy "$svc/Dockerfile" >"$df"
  if grep -q -- '--mount=' "$df"; then
    echo "build-shipped: $svc/Dockerfile has a --mount this script cannot strip:" >&2
    grep -n -- '--mount=' "$df" >&2
    exit 1
  fi
  echo "== docker build $svc/Dockerfile (legacy builder; diff to the shipped file:)"
  diff "$svc/Dockerfile" "$df" | sed 's/^/   /' || true
  t=$(date +%s)
  DOCKER_BUILDKIT=0 nice_run docker build -f "$df" -t "edge-$svc:h-shipped" . >"$work/$svc.build.log" 2>&1 ||
    { tail -40 "$work/$svc.build.log" >&2; echo "build-shipped: $svc build failed (log $work/$svc.build.log)" >&2; exit 1; }
  build_secs[$svc]=$(elapsed "$t")
  echo "  edge-$svc:h-shipped built in ${build_secs[$svc]} s, $(docker image inspect -f '{{.Size}}' "edge-$svc:h-shipped" | awk '{printf "%.1f MB", $1/1e6}')"
done

# ---- 3. containers from them: compose.yaml's hardening, the shared checks -------------------
compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi
}
project=edgeh-shipped
export EDGE_VERSION=h-shipped
export TEST_CONFIG_DIR=$work/config
export TOKEN_KEYS_FILE=$work/token_keys.yaml
export APP_DATA_VOLUME=$project-app-data
export BUSYBOX=${BUSYBOX:-/bin/busybox}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export GATEWAY_PUBLISH=127.0.0.1:$port
mkdir -p "$TEST_CONFIG_DIR"
cp config/gateway.yaml config/app.yaml config/users.yaml "$TEST_CONFIG_DIR/"
printf 'signing_kid: sh-1\nkeys:\n  - kid: sh-1\n    secret: "%s"\n' "$(head -c 48 /dev/urandom | base64 -w0)" >"$TOKEN_KEYS_FILE"
chmod 0644 "$TOKEN_KEYS_FILE"
mkdir -p secrets && [ -e secrets/grafana_admin_password ] || {
  (umask 077 && head -c 18 /dev/urandom | base64 -w0 >secrets/grafana_admin_password)
}
dc() { compose -p "$project" -f compose.yaml -f tests/containers/compose.test.yaml -f tests/images/compose.shipped.yaml "$@"; }
cid() { dc ps -q "$1"; }
cleanup() {
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  docker volume rm "$APP_DATA_VOLUME" >/dev/null 2>&1 || true
}
[ "${1:-}" = --keep ] || trap cleanup EXIT
cleanup
dc up -d --no-build gateway app

failures=0
pass() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
# shellcheck source=../containers/hardening.sh
. tests/containers/hardening.sh
check "app (shipped image) becomes healthy (its own healthcheck)" wait_healthy app 60
check "gateway (shipped image) becomes healthy (its own healthcheck)" wait_healthy gateway 60
for svc in gateway app; do
  hardening_checks "$svc" "$(cid "$svc")"
  docker exec "$(cid "$svc")" /bin/sh -c true >/dev/null 2>&1 && fail "$svc: the shipped image has /bin/sh" ||
    pass "$svc: the shipped image has no shell"
done
data_volume_checks "$(cid app)"
token=$(curl -sS -m 5 -X POST "http://127.0.0.1:$port/v1/auth/token" -H 'content-type: application/json' \
  -d '{"username":"alice","password":"alice-dev-password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') &&
  [ "$(curl -sS -m 5 -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/v1/documents?name=s.txt" \
    -H "authorization: Bearer $token" -H 'content-type: text/plain' --data-binary shipped)" = 201 ] &&
  pass "login + upload through the shipped gateway to the shipped app" || fail "login/upload through the shipped images"

echo "build-shipped: gateway build ${build_secs[gateway]} s, app build ${build_secs[app]} s, total $(elapsed "$t_start") s"
if [ "$failures" -gt 0 ]; then
  echo "build-shipped: $failures FAILED" >&2
  dc logs --tail 30 gateway app >&2 || true
  exit 1
fi
echo "build-shipped: all passed"
