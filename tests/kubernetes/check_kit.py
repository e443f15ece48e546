#!/usr/bin/env python3
"""Checks the rendered Kubernetes kit (deploy/kubernetes) without a cluster: the hardening of
every container, the pod layout (app behind a native-sidecar gateway, app on loopback), the
probes, no subPath mounts, and the drain-order arithmetic between the manifest and the two
configs. Run by scripts/check-kubernetes.sh on `kubectl kustomize` output:

    check_kit.py RENDERED.yaml [RENDERED.yaml ...]     exit 1 on any failure
    check_kit.py --self-test RENDERED.yaml             each broken variant must fail
"""

import copy
import sys

import yaml

UID = 65532


def containers(pod):
    return [("initContainers", c) for c in pod.get("initContainers", [])] + [
        ("containers", c) for c in pod.get("containers", [])
    ]


def exec_probe(c, kind):
    return (c.get(kind) or {}).get("exec", {}).get("command", [])


def check(docs):
    """Failures (strings) of one rendered kit."""
    bad = []
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"]:
        if kind not in by_kind:
            bad.append(f"no {kind} rendered")
    if "Secret" in by_kind:
        bad.append("a Secret is rendered: secrets are created out of band, never kept in git")
    if bad:
        return bad
    configs = {c["metadata"]["name"]: c["data"] for c in by_kind["ConfigMap"]}
    [dep] = by_kind["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    name = lambda what: f"deployment/{dep['metadata']['name']}: {what}"

    # Pod level.
    if pod.get("automountServiceAccountToken") is not False:
        bad.append(name("automountServiceAccountToken must be false"))
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != UID:
        bad.append(name(f"pod securityContext must set runAsNonRoot and runAsUser {UID}"))
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        bad.append(name("pod seccompProfile must be RuntimeDefault"))
    if not pod.get("topologySpreadConstraints"):
        bad.append(name("no topologySpreadConstraints"))
    for v in pod.get("volumes", []):
        for forbidden in ["hostPath", "persistentVolumeClaim"]:
            if forbidden in v:
                bad.append(name(f"volume {v['name']} is a {forbidden}"))
    volume = {v["name"]: v for v in pod.get("volumes", [])}

    # Every container.
    for where, c in containers(pod):
        cn = f"{where}[{c['name']}]"
        sc = c.get("securityContext", {})
        want = {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
        }
        for k, v in want.items():
            if sc.get(k) != v:
                bad.append(name(f"{cn}: securityContext.{k} must be {v!r}, is {sc.get(k)!r}"))
        if sc.get("privileged"):
            bad.append(name(f"{cn}: privileged"))
        caps = sc.get("capabilities", {})
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            bad.append(name(f"{cn}: capabilities must drop [ALL] and add nothing"))
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad.append(name(f"{cn}: seccompProfile must be RuntimeDefault"))
        res = c.get("resources", {})
        for part in ["requests", "limits"]:
            if not {"cpu", "memory"} <= set(res.get(part, {})):
                bad.append(name(f"{cn}: resources.{part} must set cpu and memory"))
        for kind in ["startupProbe", "readinessProbe", "livenessProbe"]:
            cmd = exec_probe(c, kind)
            # The images have no shell: the probe execs the binary's own healthcheck.
            if len(cmd) < 2 or cmd[1] != "healthcheck" or not cmd[0].startswith("/usr/local/bin/"):
                bad.append(name(f"{cn}: {kind} must exec `<binary> healthcheck`, is {cmd}"))
        for m in c.get("volumeMounts", []):
            if "subPath" in m or "subPathExpr" in m:
                bad.append(name(f"{cn}: mount {m['name']} uses subPath (never updated by the kubelet)"))
            v = volume.get(m["name"], {})
            if not m.get("readOnly") and "emptyDir" not in v:
                bad.append(name(f"{cn}: writable mount {m['name']} is not an emptyDir"))
        if c.get("env"):
            bad.append(name(f"{cn}: settings come from the mounted configs, not env"))

    # Layout: the gateway is a native sidecar, the app the main container on loopback.
    gw = [c for c in pod.get("initContainers", []) if c["name"] == "gateway"]
    app = [c for c in pod.get("containers", []) if c["name"] == "app"]
    if len(gw) != 1 or gw[0].get("restartPolicy") != "Always":
        bad.append(name("the gateway must be an init container with restartPolicy Always"))
    if len(app) != 1 or len(pod.get("containers", [])) != 1:
        bad.append(name("the app must be the only main container"))
    if bad:
        return bad
    gw, app = gw[0], app[0]
    if app.get("ports"):
        bad.append(name("the app exposes a containerPort; it must listen on loopback only"))
    gw_ports = {p["name"]: p["containerPort"] for p in gw.get("ports", [])}
    if "readyz" not in " ".join(exec_probe(gw, "readinessProbe")):
        bad.append(name("the gateway's readiness must be its /readyz (ready = reaches the app)"))
    for svc in by_kind["Service"]:
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") not in ("http", gw_ports.get("http")):
                bad.append(f"service/{svc['metadata']['name']}: port {p.get('name')} does not target the gateway's http port")

    gateway_cm = [v for v in configs.values() if "gateway.yaml" in v]
    app_cm = [v for v in configs.values() if "app.yaml" in v]
    if len(gateway_cm) != 1 or len(app_cm) != 1:
        return bad + ["want one ConfigMap with gateway.yaml and one with app.yaml"]
    g = yaml.safe_load(gateway_cm[0]["gateway.yaml"])
    a = yaml.safe_load(app_cm[0]["app.yaml"])
    if not str(a.get("listen", "")).startswith("127.0.0.1:"):
        bad.append("app.yaml: listen must be on 127.0.0.1 (inside the pod only)")
    if g.get("upstream") != a.get("listen"):
        bad.append(f"gateway.yaml: upstream {g.get('upstream')} is not the app's listen {a.get('listen')}")
    if not str(g.get("listen", "")).endswith(f":{gw_ports.get('http')}"):
        bad.append("gateway.yaml: listen port is not the gateway's http containerPort")

    # Drain order: the app outlives the gateway's delay + drain; the grace period covers all.
    t = g.get("timeouts", {})
    delay, grace = seconds(t.get("shutdown_delay", "5s")), seconds(t.get("shutdown_grace", "15s"))
    sleep = (app.get("lifecycle", {}).get("preStop", {}).get("sleep") or {}).get("seconds")
    hook = gw.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if hook[-1:] != ["drain"]:
        bad.append(name(f"the gateway's preStop must exec `gateway drain` (is {hook})"))
    if sleep is None or sleep < delay + grace:
        bad.append(name(f"the app's preStop sleep ({sleep}) must cover shutdown_delay + shutdown_grace ({delay + grace})"))
    else:
        need = sleep + a.get("shutdown_grace_seconds", 10)
        if pod.get("terminationGracePeriodSeconds", 30) <= need:
            bad.append(name(f"terminationGracePeriodSeconds must exceed the app's preStop sleep + shutdown_grace_seconds ({need})"))
    return bad


def seconds(text):
    text = str(text).strip()
    for unit, mult in [("ms", 0.001), ("s", 1), ("m", 60)]:
        if text.endswith(unit) and text[: -len(unit)].replace(".", "").isdigit():
            return float(text[: -len(unit)]) * mult
    raise ValueError(f"duration {text!r}: only ms/s/m here")


def pod_of(docs):
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]


def gw_of(docs):
    return pod_of(docs)["initContainers"][0]


def app_of(docs):
    return pod_of(docs)["containers"][0]


# Each must be caught: (what, edit of the rendered documents).
BROKEN = [
    ("writable root filesystem", lambda d: app_of(d)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("privilege escalation", lambda d: gw_of(d)["securityContext"].pop("allowPrivilegeEscalation")),
    ("a capability kept", lambda d: gw_of(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
    ("root user", lambda d: app_of(d)["securityContext"].update(runAsUser=0)),
    ("no seccomp", lambda d: gw_of(d)["securityContext"].pop("seccompProfile")),
    ("service-account token", lambda d: pod_of(d).update(automountServiceAccountToken=True)),
    ("subPath mount", lambda d: gw_of(d)["volumeMounts"][0].update(subPath="gateway.yaml")),
    ("gateway as a plain container", lambda d: gw_of(d).pop("restartPolicy")),
    ("app published", lambda d: app_of(d).update(ports=[{"containerPort": 8081}])),
    ("shell probe", lambda d: app_of(d)["livenessProbe"].update(exec={"command": ["sh", "-c", "true"]})),
    ("no gateway preStop", lambda d: gw_of(d).pop("lifecycle")),
    ("app preStop too short", lambda d: app_of(d)["lifecycle"]["preStop"]["sleep"].update(seconds=1)),
    ("grace period too short", lambda d: pod_of(d).update(terminationGracePeriodSeconds=5)),
    ("no memory limit", lambda d: app_of(d)["resources"]["limits"].pop("memory")),
]


def main(argv):
    self_test = argv[:1] == ["--self-test"]
    files = argv[1:] if self_test else argv
    failures = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if self_test:
            for what, edit in BROKEN:
                broken = copy.deepcopy(docs)
                edit(broken)
                if check(broken):
                    print(f"ok   {path}: broken variant caught: {what}")
                else:
                    print(f"FAIL {path}: broken variant passed: {what}")
                    failures += 1
            continue
        bad = check(docs)
        for b in bad:
            print(f"FAIL {path}: {b}")
        if not bad:
            print(f"ok   {path}: hardening, layout, probes, mounts and drain order")
        failures += len(bad)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
