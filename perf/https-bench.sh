#!/usr/bin/env bash
# HTTPS side by side: the gateway (every feature on, perf/gateway-bench.yaml + `tls`) and nginx
# (perf/nginx.conf + ssl/http2) terminating TLS with the same self-signed ECDSA P-256 certificate,
# one worker each, in front of the same backend. Three loads per system:
#   h1    HTTP/1.1 keep-alive over TLS: wrk -t1 -c$CONNS (perf/wrk-xff.lua: 1000 client IPs)
#   h2    HTTP/2: h2load -c$H2_CONNS -m$H2_STREAMS (the same number of requests in flight)
#   hs    a new connection and a full handshake per request, HTTP/1.1: back-to-back
#         h2load runs of $HS_BATCH clients with one request each (h2load never resumes a session)
# and for each: req/s and the proxy's CPU µs per request (utime+stime of all its processes).
#
#   perf/https-bench.sh                              # REPS=3, DURATION=8 (~3 min)
#   REPS=1 DURATION=3 SYSTEMS=nginx perf/https-bench.sh   # quick look, one side only
#
# Layout as perf/bench.sh: proxies pinned to CPU $PROXY_CPU, backend and load generators to
# $LOAD_CPU. Needs nginx (with ssl + http_v2), wrk, h2load (Debian nghttp2-client), openssl.
# Output: a markdown table on stdout and in $OUT/https-bench-<timestamp>.md, samples in .tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-32}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-8}
HS_BATCH=${HS_BATCH:-256}   # concurrent new connections per h2load run in the handshake load
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-perf/out}
BIN=${BIN:-target/release}
SYSTEMS=${SYSTEMS:-"gateway nginx"}
# Ports of their own (bench.sh uses 24080-24083, 24901): both scripts may be set up at once.
BACKEND_PORT=24181 GATEWAY_PORT=24180 NGINX_PORT=24182 ADMIN_PORT=24902
PATH_UNDER_TEST=/v1/documents

. perf/lib-bench.sh
bench_setup https-bench nginx wrk h2load openssl taskset python3 curl
trap bench_cleanup EXIT

port_of() { case $1 in gateway) echo $GATEWAY_PORT ;; nginx) echo $NGINX_PORT ;; esac; }
url_of() { echo "https://127.0.0.1:$(port_of "$1")$PATH_UNDER_TEST"; }

# --- start everything -----------------------------------------------------------------
scripts/self-signed.sh "$RUN/cert.pem" "$RUN/key.pem" 2 2>/dev/null
start_backend
for s in $SYSTEMS; do
  case $s in
    gateway) start_gateway "$(printf 'tls:\n  cert_file: %s\n  key_file: %s\n' "$RUN/cert.pem" "$RUN/key.pem")" ;;
    # TLS 1.2/1.3, h2 + http/1.1 by ALPN and HSTS, like the gateway with `tls`; session cache
    # off on both sides of the comparison (the loads below never resume a session anyway).
    nginx) start_nginx "s#^\( *\)listen @LISTEN@ \(.*\);#\1listen @LISTEN@ ssl http2 \2;\n\1ssl_certificate $RUN/cert.pem;\n\1ssl_certificate_key $RUN/key.pem;\n\1ssl_protocols TLSv1.2 TLSv1.3;\n\1add_header Strict-Transport-Security \"max-age=31536000\" always;#" ;;
    *) echo "https-bench.sh: unknown system $s" >&2; exit 1 ;;
  esac
done
for s in $SYSTEMS; do wait_port "$(port_of "$s")"; done
sleep 1

# Every system must answer 200 over both protocols before anything is timed; note what the
# handshake negotiated (same certificate, same key exchange, or the comparison is off).
for s in $SYSTEMS; do
  for proto in --http1.1 --http2; do
    got=$(curl -sS --cacert "$RUN/cert.pem" "$proto" -o /dev/null -w '%{http_code} HTTP/%{http_version}' \
      -H "x-forwarded-for: 198.18.0.1" -H "authorization: Bearer $BENCH_TOKEN" "$(url_of "$s")")
    case $got in 200\ *) ;; *) echo "https-bench.sh: $s $proto answered $got" >&2; exit 1 ;; esac
  done
  tls=$(openssl s_client -connect "127.0.0.1:$(port_of "$s")" -servername localhost -alpn h2 </dev/null 2>/dev/null |
    awk '/^New, / {p=$2" "$NF} /^Server Temp Key/ {k=$4$5} /^ALPN protocol/ {a=$3} END {print p, k, "alpn=" a}')
  echo "# $s: $tls" >&2
  record "$s" negotiated "$tls"
done

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
record all load_before "$(cut -d' ' -f1 /proc/loadavg)"

# Each prints "requests failed seconds" for SYSTEM over about SECONDS.
wrk_load() { # system seconds [wrk args]
  local s=$1 d=$2
  shift 2
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${d}s" "$@" -s perf/wrk-xff.lua "$(url_of "$s")" |
    awk '/requests in/ {n=$1; t=$4+0} /Non-2xx/ {e+=$NF} /Socket errors/ {e+=$4+$6+$8+$10} END {print n, e+0, t}'
}
h2load_run() { # system [h2load args] — one h2load run
  local s=$1
  shift
  taskset -c "$LOAD_CPU" h2load -t1 "$@" -H "x-forwarded-for: 198.18.0.1" \
    -H "authorization: Bearer $BENCH_TOKEN" "$(url_of "$s")" |
    awk '/^finished in/ {t=$3+0; if ($3 ~ /ms,$/) t/=1e3; else if ($3 ~ /us,$/) t/=1e6} /^requests:/ {n=$8} /^status codes:/ {ok=$3} END {print ok+0, n - ok, t}'
}
load_h1() { wrk_load "$1" "$2"; }
load_h2() { h2load_run "$1" -c"$H2_CONNS" -m"$H2_STREAMS" -D"$2"; }
# wrk resumes TLS sessions (seen in nginx's $ssl_session_reused) and h2load has no
# connection-per-request mode, so: back-to-back h2load runs of $HS_BATCH concurrent clients with
# one request each. h2load never resumes a session: every handshake is a full one.
load_hs() {
  local end n=0 bad=0 ts="" a b t
  end=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt "$end" ]; do
    read -r a b t <<<"$(h2load_run "$1" --h1 -c"$HS_BATCH" -n"$HS_BATCH")"
    n=$((n + a)) bad=$((bad + b)) ts="$ts $t"
  done
  echo "$n $bad $(echo "$ts" | awk '{for (i = 1; i <= NF; i++) s += $i; print s}')"
}

for s in $SYSTEMS; do for l in h1 h2 hs; do "load_$l" "$s" 2 >/dev/null; done; done # warm up
for rep in $(seq 1 "$REPS"); do
  for l in h1 h2 hs; do
    for s in $SYSTEMS; do
      read -r -a pids <<<"$(system_pids "$s")"
      t0=$(cpu_ticks "${pids[@]}")
      w0=$(date +%s.%N)
      read -r n errs secs <<<"$("load_$l" "$s" "$DURATION")"
      t1=$(cpu_ticks "${pids[@]}")
      # CPU over the whole wall time (h2load's gaps between runs included), rate over the
      # time the tool measured.
      wall=$(python3 -c "import time; print(time.time() - $w0)")
      [ "${n:-0}" -gt 0 ] || { echo "https-bench.sh: $s $l: no requests" >&2; exit 1; }
      [ "$errs" = 0 ] || echo "https-bench.sh: WARNING $s $l: $errs failed or non-2xx of $n" >&2
      rps=$(python3 -c "print(round($n / $secs))")
      us=$(python3 -c "print(round(($t1 - $t0) * 1e6 / $CLK_TCK / $n, 2))")
      util=$(python3 -c "print(round(($t1 - $t0) * 100 / $CLK_TCK / $wall))")
      record "$s" "${l}_rps" "$rps"
      record "$s" "${l}_cpu_us" "$us"
      record "$s" "${l}_util" "$util"
      record "$s" "${l}_failed" "$errs"
      echo "rep $rep $s $l: $rps req/s, $us us CPU/req, ${util}% of a core, $errs failed" >&2
    done
  done
done
record_peak_rss
record all load_after "$(cut -d' ' -f1 /proc/loadavg)"

python3 - "$TSV" "$DURATION" "$REPS" "$CONNS" "$H2_CONNS" "$H2_STREAMS" "$HS_BATCH" >"$MD" <<'EOF'
import statistics, sys
tsv, duration, reps, conns, h2c, h2m, hsb = sys.argv[1:]
data, text = {}, {}
for s, m, v in (l.rstrip("\n").split("\t") for l in open(tsv)):
    try:
        data.setdefault((s, m), []).append(float(v))
    except ValueError:
        text[(s, m)] = v
systems = [s for s in ("gateway", "nginx") if (s, "h1_rps") in data]
med = lambda s, m: statistics.median(data[(s, m)]) if (s, m) in data else None

def cell(s, m, d):
    v = data.get((s, m))
    if not v:
        return "–"
    f = lambda x: f"{x:.{d}f}"
    return f(statistics.median(v)) if len(v) == 1 else f"{f(statistics.median(v))} ({f(min(v))}–{f(max(v))})"

loads = [("h1", f"HTTP/1.1 keep-alive (wrk -c{conns})"), ("h2", f"HTTP/2 (h2load -c{h2c} -m{h2m})"),
         ("hs", f"full handshake per request (h2load --h1 -c{hsb} -n{hsb}, repeated)")]
print("| metric | " + " | ".join(systems) + (" | gateway/nginx |" if len(systems) == 2 else " |"))
print("|---|" + "---|" * (len(systems) + (len(systems) == 2)))
for l, name in loads:
    for m, label, d in ((f"{l}_rps", "req/s", 0), (f"{l}_cpu_us", "CPU µs per request", 2),
                        (f"{l}_util", "% of a core", 0), (f"{l}_failed", "failed requests", 0)):
        row = f"| {name}: {label} | " + " | ".join(cell(s, m, d) for s in systems)
        if len(systems) == 2 and m.endswith(("_rps", "_cpu_us")):
            row += f" | {med('gateway', m) / med('nginx', m):.2f}×"
        elif len(systems) == 2:
            row += " | "
        print(row + " |")
print("| peak RSS MB (all processes) | " + " | ".join(cell(s, "peak_rss_mb", 1) for s in systems) + (" | |" if len(systems) == 2 else " |"))
print()
print(f"Medians of {reps} runs, (min–max) in brackets; {duration} s per sample. Negotiated: "
      + "; ".join(f"{s} {text.get((s, 'negotiated'), '?')}" for s in systems) + ".")
print(f"Load average before/after: {data[('all', 'load_before')][0]} / {data[('all', 'load_after')][0]}.")
EOF
cat "$MD"
echo "# raw samples: $TSV; run directory: $RUN" >&2
