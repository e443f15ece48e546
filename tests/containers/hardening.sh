# Hardening checks shared by tests/containers/run.sh (test images) and
# tests/images/build-shipped.sh (the shipped images). Sourced; the caller defines
# pass/fail (counters) and cid SERVICE (container id). The write probes exec /busybox,
# which the test images carry and the shipped-image run bind-mounts.

check() { # check "description" command...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}
check_not() {
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then fail "$what"; else pass "$what"; fi
}
wait_healthy() { # wait_healthy SERVICE SECONDS
  local c; c=$(cid "$1")
  for _ in $(seq "$2"); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] && return 0
    sleep 1
  done
  docker logs "$c" 2>&1 | tail -20 >&2
  return 1
}

# hardening_checks SERVICE CONTAINER — from docker inspect and the live process.
hardening_checks() {
  local svc=$1 c=$2 status
  inspect() { docker inspect -f "$1" "$c"; }
  [ "$(inspect '{{.Config.User}}')" = 65532:65532 ] && pass "$svc: configured user 65532:65532" || fail "$svc: user $(inspect '{{.Config.User}}')"
  [ "$(inspect '{{.HostConfig.ReadonlyRootfs}}')" = true ] && pass "$svc: read-only root fs" || fail "$svc: root fs writable"
  [ "$(inspect '{{json .HostConfig.CapDrop}}')" = '["ALL"]' ] && [ "$(inspect '{{json .HostConfig.CapAdd}}')" = null ] \
    && pass "$svc: cap_drop ALL, nothing added" || fail "$svc: capabilities $(inspect '{{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}}')"
  inspect '{{json .HostConfig.SecurityOpt}}' | grep -q 'no-new-privileges:true' && pass "$svc: no-new-privileges" || fail "$svc: no no-new-privileges"
  [ "$(inspect '{{.HostConfig.PidsLimit}}')" -gt 0 ] 2>/dev/null && pass "$svc: pids limit $(inspect '{{.HostConfig.PidsLimit}}')" || fail "$svc: no pids limit"
  [ "$(inspect '{{.HostConfig.Memory}}')" -gt 0 ] && [ "$(inspect '{{.HostConfig.NanoCpus}}')" -gt 0 ] \
    && pass "$svc: memory and CPU limits" || fail "$svc: no memory/CPU limit"
  [ "$(inspect '{{.HostConfig.RestartPolicy.Name}}')" = on-failure ] && pass "$svc: restart on-failure" || fail "$svc: restart policy"
  inspect '{{json .Config.Env}}' | grep -qi 'secret' && fail "$svc: a secret in the environment" || pass "$svc: no secret in the environment"
  inspect '{{range .Mounts}}{{.Destination}} {{.RW}}{{"\n"}}{{end}}' | grep -q '^/var/run/docker.sock' && fail "$svc: docker socket mounted" || pass "$svc: no docker socket"

  # The running process as the kernel sees it.
  status=/proc/$(inspect '{{.State.Pid}}')/status
  if [ -r "$status" ]; then
    grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532' "$status" && pass "$svc: process runs as uid 65532" || fail "$svc: $(grep ^Uid "$status")"
    grep -qE '^CapEff:\s+0+$' "$status" && grep -qE '^CapBnd:\s+0+$' "$status" \
      && pass "$svc: process has no effective or bounding capabilities" || fail "$svc: $(grep -E '^Cap(Eff|Bnd)' "$status" | tr '\n' ' ')"
    grep -qE '^NoNewPrivs:\s+1' "$status" && pass "$svc: process has NoNewPrivs" || fail "$svc: NoNewPrivs unset"
  else
    [ "$(docker exec "$c" /busybox id -u)" = 65532 ] && pass "$svc: exec'd process runs as uid 65532" || fail "$svc: uid $(docker exec "$c" /busybox id -u)"
  fi
  # Writes: the root fs refuses, /tmp (tmpfs) accepts.
  check_not "$svc: a write to /etc fails" docker exec "$c" /busybox touch /etc/probe
  check_not "$svc: a write to /usr/local/bin fails" docker exec "$c" /busybox touch /usr/local/bin/probe
  check "$svc: a write to /tmp (tmpfs) works" docker exec "$c" /busybox touch /tmp/probe
}

# data_volume_checks APP_CONTAINER — the named data volume is writable by the non-root user.
data_volume_checks() {
  check "app: the data volume is writable by the non-root user" docker exec "$1" /busybox touch /data/.probe
  docker exec "$1" /busybox rm -f /data/.probe
}
