#!/usr/bin/env bash
# The Kubernetes kit checked without a cluster (scripts/test.sh runs it; README "Run on
# Kubernetes" says what this does and does not exercise): `kubectl kustomize` renders the base
# and the `shared` overlay; every rendered object validates strictly against the Kubernetes
# 1.30 and newest schemas shipped by `kubernetes-validate` (offline); tests/kubernetes/check_kit.py
# asserts the hardening, layout, probes, mounts and drain order (and that broken variants
# fail); the overlay's gateway config is the base's plus shared limits; both configs pass
# `gateway check-config`. Needs kubectl (with kustomize) and kubernetes-validate (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
kit=deploy/kubernetes
gateway_bin=${GATEWAY_BIN:-target/debug/gateway}
command -v kubectl >/dev/null || { echo "check-kubernetes: kubectl missing (.ci/run installs it)" >&2; exit 1; }
# Through the module: a pip-installed console script may not be on PATH (pyenv shims).
validate() { python3 -m kubernetes_validate "$@"; }
validate --version >/dev/null 2>&1 || { echo "check-kubernetes: kubernetes-validate missing (.ci/run installs it)" >&2; exit 1; }
work=$(mktemp -d /tmp/k8s-kit.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0

# Render. deploy/kubernetes is the base (its kustomization includes base/ only).
timeout 60 kubectl kustomize "$kit" >"$work/default.yaml"
timeout 60 kubectl kustomize "$kit/base" >"$work/base.yaml"
timeout 60 kubectl kustomize "$kit/shared" >"$work/shared.yaml"
cmp -s "$work/default.yaml" "$work/base.yaml" || { echo "FAIL $kit renders other than $kit/base"; fail=1; }
echo "ok   rendered $kit, $kit/base, $kit/shared ($(grep -c '^kind:' "$work/shared.yaml") objects)"

# Schemas: the oldest supported (native sidecars + preStop sleep: 1.30) and the newest shipped.
newest=$(python3 -c 'import kubernetes_validate.utils as u; print(u.latest_version())')
for version in 1.30.0 "$newest"; do
  if timeout 120 python3 -m kubernetes_validate --strict --quiet -k "$version" "$work/base.yaml" "$work/shared.yaml"; then
    echo "ok   strict schema validation, Kubernetes $version"
  else
    echo "FAIL strict schema validation, Kubernetes $version"; fail=1
  fi
done
# The validator must be able to fail: an unknown field and a wrong type.
sed 's/^\(\s*\)restartPolicy: Always/\1restartPolicy: Always\n\1restartPolcy: Always/' "$work/base.yaml" >"$work/unknown.yaml"
sed 's/terminationGracePeriodSeconds: 30/terminationGracePeriodSeconds: thirty/' "$work/base.yaml" >"$work/badtype.yaml"
for broken in unknown badtype; do
  if cmp -s "$work/base.yaml" "$work/$broken.yaml"; then
    echo "FAIL broken variant $broken: the edit did not apply"; fail=1
  elif timeout 120 python3 -m kubernetes_validate --strict --quiet -k 1.30.0 "$work/$broken.yaml" >/dev/null 2>&1; then
    echo "FAIL broken variant $broken passed schema validation"; fail=1
  else
    echo "ok   broken variant $broken fails schema validation"
  fi
done

# Hardening, layout, probes, mounts, drain order; then broken variants of each.
python3 tests/kubernetes/check_kit.py "$work/base.yaml" "$work/shared.yaml" || fail=1
python3 tests/kubernetes/check_kit.py --self-test "$work/base.yaml" || fail=1

# The overlay's config is the base's plus shared limits (as config/gateway.shared.yaml is).
python3 - "$kit/base/gateway.yaml" "$kit/shared/gateway.yaml" <<'PY' || fail=1
import sys, yaml
a, b = (yaml.safe_load(open(p)) for p in sys.argv[1:])
ok = "shared_limits" not in a and "shared_limits" in b
b.pop("shared_limits", None)
for p in b.get("rate_limits", {}).get("policies", []):
    p.pop("shared", None)
ok = ok and a == b
print(("ok  " if ok else "FAIL") + " shared/gateway.yaml is base/gateway.yaml plus shared limits, nothing else")
sys.exit(0 if ok else 1)
PY

# Both configs as the gateway itself reads them (files they name live only in the pod).
if [ -x "$gateway_bin" ]; then
  for f in "$kit/base/gateway.yaml" "$kit/shared/gateway.yaml"; do
    "$gateway_bin" check-config --skip-files "$f" || fail=1
  done
else
  echo "FAIL $gateway_bin not built (cargo build -p gateway)"; fail=1
fi

[ "$fail" = 0 ] && echo "check-kubernetes: all passed" || { echo "check-kubernetes: failures above"; exit 1; }
