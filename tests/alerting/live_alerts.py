#!/usr/bin/env python3
"""Live alert delivery: the repo's own Prometheus and Alertmanager configs, run by Debian's real
`prometheus` and `prometheus-alertmanager`, scraping real `gateway` and `app` processes, deliver
to a webhook receiver in this process. Run by scripts/alert-delivery-test.sh.

What the test rewrites (and asserts each rewrite happened once, so none silently no-ops):
  prometheus.yml   targets → loopback ports, scrape/evaluation interval 15s → 1s;
  alerts.yml       only UpstreamDown's `for: 1m` → `for: 3s` (names, labels, annotations as shipped);
  alertmanager.yml the receivers' placeholder host → this receiver, group_wait/group_interval → 1s;
  gateway.yaml     listen/admin/upstream/key file → loopback + dev key, admin token → a scratch
                   file, upstream_refresh 5s → 1s.
The runbook base URL (external label runbook_base_url) is left as shipped and read from the file.

Checks: every alert rule loads; every Grafana dashboard query evaluates without error via
/api/v1/query; RUNBOOK.md's `am …` commands ("Test an alert receiver", "Silence alerts during
maintenance") run as written against this Alertmanager, with their effects checked; killing the app delivers a firing UpstreamDown to the critical receiver with its
runbook link (shipped base + "#upstreamdown", a real RUNBOOK.md heading) and without the helper
label; a symptom alert posted meanwhile is inhibited and never delivered; a warning is routed to
the other receiver; restarting the app delivers the resolved UpstreamDown. Bounded: DEADLINE s.
"""
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from dashboard_queries import prometheus_queries  # noqa: E402
DEADLINE = time.monotonic() + float(os.environ.get("ALERT_TEST_DEADLINE", "200"))
BIN = os.environ.get("EDGE_BIN_DIR", os.path.join(ROOT, "target", "debug"))
PROMETHEUS = os.environ.get("PROMETHEUS", shutil.which("prometheus") or "prometheus")
ALERTMANAGER = os.environ.get(
    "ALERTMANAGER", shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or "alertmanager"
)

failures = []


def ok(msg):
    print(f"ok   {msg}", flush=True)


def fail(msg):
    print(f"FAIL {msg}", flush=True)
    failures.append(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def rewrite(text, pattern, repl, count, what, flags=0):
    new, n = re.subn(pattern, repl, text, flags=flags)
    if n != count:
        raise SystemExit(f"live_alerts: rewrite '{what}' matched {n} times, want {count}")
    return new


def call(method, url, body=None, timeout=3):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def wait_for(what, pred, seconds):
    """Polls pred every 0.25 s until truthy (returned) or seconds / the global deadline pass."""
    end = min(time.monotonic() + seconds, DEADLINE)
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    fail(f"timed out waiting for {what}")
    return None


class Receiver(http.server.BaseHTTPRequestHandler):
    """Alertmanager's webhook: keeps (path, payload) of every notification."""

    got = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with Receiver.lock:
            Receiver.got.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def notifications(path, alertname, status, synthetic=False):
    """Alerts named alertname with status among the notifications sent to path; the ones the
    test posted itself carry a `test` label and are told apart from Prometheus's."""
    with Receiver.lock:
        return [
            a
            for p, n in Receiver.got
            if p == path
            for a in n.get("alerts", [])
            if a["labels"].get("alertname") == alertname and a["status"] == status
            and ("test" in a["labels"]) == synthetic
        ]


def runbook_commands(section):
    """The `am …` lines (with their continuation lines) of a RUNBOOK.md section's sh blocks."""
    text = read("RUNBOOK.md")
    body = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            if cmd.startswith("am "):
                cmds.append(re.sub(r"\s+#.*$", "", cmd))
    return cmds


def amtool(am_url, cmd):
    """Runs one RUNBOOK `am …` command line in bash with am() pointed at the test's Alertmanager."""
    script = f'am() {{ amtool --alertmanager.url={am_url} "$@"; }}\nUSER=live-test\n{cmd}'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20)
    return r.returncode, (r.stdout + r.stderr).strip()


def main():
    tmp = tempfile.mkdtemp(prefix="edge-alerts.")
    procs = {}
    ports = {k: free_port() for k in ("gw", "admin", "app", "prom", "am", "recv")}

    def start(name, argv):
        log = open(os.path.join(tmp, f"{name}.log"), "ab")
        procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    try:
        # ---- configs: the repo's own files, rewritten for loopback ------------------------
        gw = read("config/gateway.yaml")
        gw = rewrite(gw, r"(?m)^listen: .*$", f"listen: 127.0.0.1:{ports['gw']}", 1, "gateway listen")
        gw = rewrite(gw, r"(?m)^admin_listen: .*$", f"admin_listen: 127.0.0.1:{ports['admin']}", 1, "admin_listen")
        gw = rewrite(gw, r"(?m)^upstream: .*$", f"upstream: 127.0.0.1:{ports['app']}", 1, "upstream")
        gw = rewrite(gw, r"(?m)^token_key_file: .*$", "token_key_file: config/dev-token-keys.yaml", 1, "gw keys")
        gw = rewrite(gw, r"(?m)^(\s+upstream_refresh:) 5s", r"\1 1s", 1, "upstream_refresh")
        gw = rewrite(gw, r"(?m)^(\s+token_file:) /run/secrets/admin_token", rf"\1 {tmp}/admin_token", 1, "admin token")
        app = read("config/app.yaml")
        app = rewrite(app, r"(?m)^listen: .*$", f"listen: 127.0.0.1:{ports['app']}", 1, "app listen")
        app = rewrite(app, r"(?m)^data_dir: .*$", f"data_dir: {tmp}/data", 1, "data_dir")
        app = rewrite(app, r"(?m)^users_file: .*$", "users_file: config/users.yaml", 1, "users_file")
        app = rewrite(app, r"(?m)^token_key_file: .*$", "token_key_file: config/dev-token-keys.yaml", 1, "app keys")

        prom = read("prometheus/prometheus.yml")
        prom = rewrite(prom, r"(?m)^(\s+(scrape|evaluation)_interval:) 15s$", r"\1 1s", 2, "intervals")
        prom = rewrite(prom, r'"gateway:9901"', f'"127.0.0.1:{ports["admin"]}"', 1, "gateway target")
        prom = rewrite(prom, r'"app:8081"', f'"127.0.0.1:{ports["app"]}"', 1, "app target")
        prom = rewrite(prom, r'"localhost:9090"', f'"127.0.0.1:{ports["prom"]}"', 1, "prometheus target")
        prom = rewrite(prom, r'"alertmanager:9093"', f'"127.0.0.1:{ports["am"]}"', 2, "alertmanager targets")
        m = re.search(r"(?m)^\s+runbook_base_url: (\S+)$", prom)
        if not m:
            raise SystemExit("live_alerts: prometheus.yml sets no external label runbook_base_url")
        runbook_base = m.group(1).strip("\"'")
        rules = read("prometheus/alerts.yml")
        alert_names = re.findall(r"(?m)^\s+- alert: (\w+)$", rules)
        # Only UpstreamDown's hold time is shortened (1m would outlast the test's budget).
        rules = rewrite(rules, r"(- alert: UpstreamDown\n(?:.*\n)*?\s+for:) 1m", r"\1 3s", 1, "UpstreamDown for")
        am = read("alertmanager/alertmanager.yml")
        am = rewrite(am, r"http://alert-receiver\.invalid:9095/", f"http://127.0.0.1:{ports['recv']}/", 2, "receivers")
        am = rewrite(am, r"(group_wait|group_interval): \d+[sm]\b", r"\1: 1s", 4, "group timers")

        files = {
            "gateway.yaml": gw,
            "app.yaml": app,
            "prometheus.yml": prom,
            "alerts.yml": rules,
            "alertmanager.yml": am,
            "admin_token": "live-alerts-admin-token-0123456789\n",
        }
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)

        # ---- processes ----------------------------------------------------------------------
        server = http.server.ThreadingHTTPServer(("127.0.0.1", ports["recv"]), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        app_argv = [os.path.join(BIN, "app"), "--config", os.path.join(tmp, "app.yaml")]
        start("app", app_argv)
        start("gateway", [os.path.join(BIN, "gateway"), "--config", os.path.join(tmp, "gateway.yaml")])
        start(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={tmp}/alertmanager.yml",
                f"--storage.path={tmp}/am",
                f"--web.listen-address=127.0.0.1:{ports['am']}",
                "--cluster.listen-address=",
            ],
        )
        start(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={tmp}/prometheus.yml",
                f"--storage.tsdb.path={tmp}/prom",
                f"--web.listen-address=127.0.0.1:{ports['prom']}",
            ],
        )
        prom_url = f"http://127.0.0.1:{ports['prom']}"
        am_url = f"http://127.0.0.1:{ports['am']}"
        gw_url = f"http://127.0.0.1:{ports['gw']}"
        for what, url in [
            ("gateway /readyz", f"http://127.0.0.1:{ports['admin']}/readyz"),
            ("prometheus /-/ready", f"{prom_url}/-/ready"),
            ("alertmanager /-/ready", f"{am_url}/-/ready"),
        ]:
            if wait_for(what, lambda: call("GET", url)[0] == 200, 30):
                ok(f"{what} answers")
        if failures:
            return

        def query(expr):
            st, body = call("GET", f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
            return st, (json.loads(body) if body else {})

        # Traffic, so the dashboard's series exist: a login, lists, a 404 and a 401.
        st, body = call("POST", f"{gw_url}/v1/auth/token", {"username": "alice", "password": "alice-dev-password"})
        token = json.loads(body)["access_token"] if st == 200 else ""
        for _ in range(5):
            urllib.request.urlopen(
                urllib.request.Request(f"{gw_url}/v1/documents", headers={"authorization": f"Bearer {token}"}),
                timeout=3,
            ).read()
            call("GET", f"{gw_url}/nope")
            call("GET", f"{gw_url}/v1/documents")

        def targets_up():
            st, r = query('sum(up{job=~"gateway|app|prometheus|alertmanager"})')
            res = r.get("data", {}).get("result", [])
            return st == 200 and res and float(res[0]["value"][1]) == 4

        if wait_for("all four scrape targets up", targets_up, 30):
            ok("prometheus scrapes gateway, app, itself and alertmanager on loopback")

        def rules_loaded():
            st, body = call("GET", f"{prom_url}/api/v1/rules?type=alert")
            if st != 200:
                return None
            got = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
            return got if len(got) == len(alert_names) else None

        loaded = wait_for("the alert rules to load", rules_loaded, 15) or []
        bad = [r["name"] for r in loaded if r.get("health") not in ("ok", "unknown")]
        names = sorted(r["name"] for r in loaded)
        if loaded and not bad and names == sorted(alert_names):
            ok(f"all {len(names)} alert rules of prometheus/alerts.yml loaded and healthy")
        elif loaded:
            fail(f"rules loaded {names} vs {sorted(alert_names)}; unhealthy {bad}")

        # ---- every dashboard query, against the real Prometheus ------------------------------
        time.sleep(3)  # a few more scrapes after the traffic, so rate() has two samples
        dash_dir = os.path.join(ROOT, "grafana", "dashboards")
        for fname in sorted(os.listdir(dash_dir)):
            if not fname.endswith(".json"):
                continue
            with open(os.path.join(dash_dir, fname)) as f:
                dash = json.load(f)
            # Grafana's range macros as 1m: about 60 of the test's 1 s scrapes.
            exprs = prometheus_queries(dash, "1m")
            errors, with_data = [], 0
            for e in exprs:
                st, r = query(e)
                if st != 200 or r.get("status") != "success":
                    errors.append(f"{e!r}: {st} {r.get('error')}")
                elif r["data"]["result"]:
                    with_data += 1
            if not exprs:
                fail(f"{fname}: no Prometheus queries found")
            elif errors:
                fail(f"{fname}: {len(errors)} queries fail: " + "; ".join(errors))
            else:
                ok(f"{fname}: all {len(exprs)} queries evaluate without error ({with_data} return series now)")

        # ---- RUNBOOK "Test an alert receiver" and "Silence alerts during maintenance", as written
        receiver_cmds = [c for c in runbook_commands("Test an alert receiver") if c.startswith("am alert add")]
        silence_cmds = runbook_commands("Silence alerts during maintenance")
        if len(receiver_cmds) != 1 or not any(c.startswith("am silence add") for c in silence_cmds):
            fail(f"RUNBOOK amtool commands not found: {receiver_cmds} {silence_cmds}")
        else:
            rc, out = amtool(am_url, receiver_cmds[0].replace("ReceiverTest", "ReceiverTest test=runbook"))
            if rc == 0 and wait_for("the RUNBOOK's test alert on /page",
                                    lambda: notifications("/page", "ReceiverTest", "firing", synthetic=True), 20):
                ok("RUNBOOK 'Test an alert receiver': amtool alert add reaches the critical receiver")
            elif rc != 0:
                fail(f"amtool alert add: {out}")
            add = next(c for c in silence_cmds if c.startswith("am silence add"))
            rc, sid = amtool(am_url, add)
            if rc == 0 and re.fullmatch(r"[0-9a-f-]{36}", sid):
                ok(f"RUNBOOK 'Silence alerts during maintenance': silence {sid[:8]}… added")
                # A TargetDown arriving during the maintenance is silenced, not delivered.
                rc, out = amtool(am_url, "am alert add TargetDown severity=critical test=silence")
                def silenced():
                    st, body = call("GET", f"{am_url}/api/v2/alerts?" + urllib.parse.urlencode(
                        {"filter": ['alertname="TargetDown"', 'test="silence"']}, doseq=True))
                    alerts = json.loads(body) if st == 200 else []
                    return alerts and alerts[0]["status"]["state"] == "suppressed" and sid in alerts[0]["status"]["silencedBy"]
                if wait_for("the TargetDown to be silenced", silenced, 10):
                    time.sleep(2)  # > group_wait + group_interval: it would have been sent by now
                    if notifications("/page", "TargetDown", "firing", synthetic=True):
                        fail("a silenced alert was delivered")
                    else:
                        ok("an alert matching the silence is suppressed and not delivered")
                q = [c for c in silence_cmds if c.startswith("am silence query")]
                rc, out = amtool(am_url, q[0] if q else "am silence query")
                if sid[:8] in out:
                    ok("'am silence query' lists it")
                else:
                    fail(f"silence query: {out}")
                exp = [c for c in silence_cmds if c.startswith("am silence expire")]
                rc, out = amtool(am_url, exp[0].replace("ID", sid) if exp else f"am silence expire {sid}")
                if rc == 0 and wait_for("the TargetDown after expiry",
                                        lambda: notifications("/page", "TargetDown", "firing", synthetic=True), 10):
                    ok("after 'am silence expire ID' the held-back alert is delivered")
                else:
                    fail(f"silence expire: rc {rc} {out}")
            else:
                fail(f"amtool silence add: rc {rc} {sid}")
        # Resolve the test's own alerts so they don't interleave with what follows.
        stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
        for name, test in (("ReceiverTest", "runbook"), ("TargetDown", "silence")):
            call("POST", f"{am_url}/api/v2/alerts", [{"labels": {"alertname": name, "severity": "critical", "test": test},
                                                      "startsAt": stamp(time.time() - 60), "endsAt": stamp(time.time())}])

        # ---- kill the app: UpstreamDown reaches the critical receiver ------------------------
        t_kill = time.monotonic()
        procs["app"].kill()
        procs["app"].wait()
        firing = wait_for("a firing UpstreamDown notification on /page",
                          lambda: notifications("/page", "UpstreamDown", "firing"), 60)
        if firing:
            a = firing[0]
            ok(f"UpstreamDown delivered to the critical receiver {time.monotonic() - t_kill:.1f} s after the kill")
            want = f"{runbook_base}#upstreamdown"
            got = a["annotations"].get("runbook_url")
            if got == want:
                ok(f"its runbook link is the configured base + anchor: {got}")
            else:
                fail(f"runbook_url {got!r}, want {want!r}")
            anchor = got.rsplit("#", 1)[-1] if got else ""
            headings = {h.strip().lower() for h in re.findall(r"(?m)^### (.+)$", read("RUNBOOK.md"))}
            if anchor in headings:
                ok(f"the anchor #{anchor} is a RUNBOOK.md heading")
            else:
                fail(f"#{anchor} is no RUNBOOK.md '### ' heading")
            if a["labels"].get("severity") == "critical" and "runbook_base_url" not in a["labels"]:
                ok("labels: severity critical, the runbook_base_url helper label dropped")
            else:
                fail(f"labels {a['labels']}")
            if a["annotations"].get("summary") and a["annotations"].get("description"):
                ok(f"summary: {a['annotations']['summary']}")
            else:
                fail(f"annotations {a['annotations']}")

        # A symptom posted while UpstreamDown fires is inhibited; a warning goes to /ticket.
        now = time.time()
        synthetic = [
            {"labels": {"alertname": "GatewayHighErrorRate", "severity": "critical", "test": "live"},
             "annotations": {"summary": "synthetic symptom"}, "startsAt": stamp(now), "endsAt": stamp(now + 300)},
            {"labels": {"alertname": "ForwardedHeaderSpoofSpike", "severity": "warning", "test": "live"},
             "annotations": {"summary": "synthetic warning"}, "startsAt": stamp(now), "endsAt": stamp(now + 300)},
        ]
        st, _ = call("POST", f"{am_url}/api/v2/alerts", synthetic)
        if st != 200:
            fail(f"posting synthetic alerts: {st}")

        def inhibited():
            st, body = call("GET", f"{am_url}/api/v2/alerts?" + urllib.parse.urlencode(
                {"filter": 'alertname="GatewayHighErrorRate"'}))
            alerts = json.loads(body) if st == 200 else []
            return alerts and alerts[0]["status"]["state"] == "suppressed" and alerts[0]["status"]["inhibitedBy"]

        if wait_for("GatewayHighErrorRate to be inhibited by UpstreamDown", inhibited, 15):
            ok("a GatewayHighErrorRate posted while UpstreamDown fires is inhibited")
        if wait_for("the warning on /ticket",
                    lambda: notifications("/ticket", "ForwardedHeaderSpoofSpike", "firing", synthetic=True), 15):
            ok("a warning is routed to the other receiver (/ticket)")
        if notifications("/page", "GatewayHighErrorRate", "firing", synthetic=True):
            fail("the inhibited GatewayHighErrorRate was delivered")
        else:
            ok("the inhibited symptom was not delivered")
        # Resolve the synthetic alerts before the cause clears, so nothing is left to deliver.
        for s in synthetic:
            s["endsAt"] = stamp(time.time())
        call("POST", f"{am_url}/api/v2/alerts", synthetic)

        # ---- restart the app: the resolved notification -------------------------------------
        t_up = time.monotonic()
        start("app", app_argv)
        if wait_for("a resolved UpstreamDown notification on /page",
                    lambda: notifications("/page", "UpstreamDown", "resolved"), 60):
            ok(f"resolved UpstreamDown delivered {time.monotonic() - t_up:.1f} s after the app restarted")
        if notifications("/page", "GatewayHighErrorRate", "firing", synthetic=True):
            fail("GatewayHighErrorRate was delivered after the inhibition ended")
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if failures:
            for name in procs:
                print(f"---- {name}.log (tail)", file=sys.stderr)
                with open(os.path.join(tmp, f"{name}.log"), errors="replace") as f:
                    sys.stderr.write("".join(f.readlines()[-15:]))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
    if failures:
        print(f"alert delivery: {len(failures)} FAILED", file=sys.stderr)
        sys.exit(1)
    print("alert delivery: all passed")
