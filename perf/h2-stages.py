#!/usr/bin/env python3
"""Per-stage inclusive instructions per request of the gateway's HTTP/2 path, from a callgrind dump.

    perf/h2-stages.py DUMP REQUESTS

DUMP: a gateway dump of a `tls-h2` run of perf/instructions.sh (KEEP_RUN=1 keeps them: the
second dump of the TLS process, gateway.cg.PID.2); REQUESTS: the requests counted in it. Reads
`callgrind_annotate --inclusive=yes` and sums the functions of each stage, by the names the
bench-ci build shows (CI's profile). The release build's LTO inlines most of them into their
callers, so its table is not meaningful (stages show 0 or negative).
Stages overlap where one calls another (the h2 crate's connection driver calls the frame
watcher through the TLS read): each line says what it includes.
"""
import re
import subprocess
import sys


def load(dump):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
        capture_output=True, text=True, check=True,
    ).stdout
    inc = {}
    for line in out.splitlines():
        if "PROGRAM TOTALS" in line:
            inc["PROGRAM TOTALS"] = int(line.split()[0].replace(",", ""))
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(?:\*\s+)?\S*?:(.*?)(?: \[[^\]]*\])?$", line)
        if m and "PROGRAM TOTALS" not in line:
            inc[m.group(2)] = inc.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return inc


def total(inc, *patterns):
    return sum(v for k, v in inc.items() if any(re.fullmatch(p, k) for p in patterns))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    inc, n = load(sys.argv[1]), int(sys.argv[2])
    grand = inc.pop("PROGRAM TOTALS")
    tls_io = total(inc, r"<gateway::accept::tls::stream::TlsIo as tokio::io::async_(read::AsyncRead>::poll_read|write::AsyncWrite>::poll_(write|flush))")
    driver = total(inc, r"h2::server::Connection<T,B>::poll_accept")
    stream_api = total(
        inc,
        r"h2::proto::streams::streams::StreamRef<B>::(send_response|send_data|reserve_capacity|poll_capacity|poll_reset|poll_data)",
        r"<h2::proto::streams::streams::OpaqueStreamRef as core::ops::drop::Drop>::drop",
        r"core::ptr::drop_in_place<h2::share::RecvStream>",
    )
    stream_task = total(inc, r"<core::pin::Pin<P> as core::future::future::Future>::poll")
    pipeline = total(inc, r"<pingora_proxy::HttpProxy<SV,C> as pingora_core::apps::HttpServerApp>::process_new_http::\{\{closure\}\}")
    conn_task = total(inc, r"gateway::accept::handle::\{\{closure\}\}")
    rows = [
        ("frame watcher (FrameWatch::feed, in the TLS read hook)",
         total(inc, r"gateway::accept::h2::frames::FrameWatch::feed")),
        ("h2 crate, connection driver (poll_accept: frame read/decode, HPACK, frame write; TLS I/O under it excluded)",
         driver - tls_io),
        ("  of which HPACK decode of the request (Decoder::decode)", total(inc, r"h2::hpack::decoder::Decoder::decode")),
        ("  of which HPACK encode of the response (Encoder::encode)", total(inc, r"h2::hpack::encoder::Encoder::encode")),
        ("h2 crate, stream side called by pingora (send_response, send_data, capacity, reset, stream drops)", stream_api),
        ("TLS I/O under the h2 driver (TlsIo read/write/flush: rustls, syscalls)", tls_io),
        ("TLS handshakes (one per connection, amortised)",
         total(inc, r"<tokio_rustls::common::handshake::MidHandshake<IS> as core::future::future::Future>::poll")),
        ("per-stream glue: our accept loop around poll_accept (spawn, select, session moves; handshakes excluded)",
         conn_task - driver - total(inc, r"<tokio_rustls::common::handshake::MidHandshake<IS> as core::future::future::Future>::poll")),
        ("per-stream glue: our stream task minus pingora's pipeline and the session drop (yield, reset check, size "
         "check; includes pingora boxing the pipeline future, ~10 000 of memcpy, as on HTTP/1.1)",
         stream_task - pipeline - total(inc, r"core::ptr::drop_in_place<pingora_core::protocols::http::v2::server::HttpSession>")),
        ("pingora's pipeline (process_new_http: our filters, upstream, response; everything below)", pipeline),
        ("header conversions: h2 -> http::Request (convert_poll_message), :authority -> Host, ResponseHeader -> http parts",
         total(inc, r"<h2::server::Peer as h2::proto::peer::Peer>::convert_poll_message",
               r"pingora_proxy::proxy_common::set_h1_host_from_authority",
               r"pingora_http::ResponseHeader::as_owned_parts")),
        ("response path: pingora v2 write_response_header (Date, hop-by-hop removal, conversion, send_response)",
         total(inc, r"pingora_core::protocols::http::v2::server::HttpSession::write_response_header")),
        ("response path: body (reserve_and_send) and stream drop",
         total(inc, r"pingora_core::protocols::http::v2::reserve_and_send::\{\{closure\}\}",
               r"core::ptr::drop_in_place<pingora_core::protocols::http::v2::server::HttpSession>")),
        ("our filters: request_filter + upstream_request_filter + response_filter + logging",
         total(inc, r"<gateway::forward::proxy::Gateway as pingora_proxy::proxy_trait::ProxyHttp>::(request_filter|upstream_request_filter|response_filter|logging)::\{\{closure\}\}")),
        ("whole process (the dump's total)", grand),
    ]
    print(f"| stage (inclusive, per request, {n} requests) | instructions |")
    print("|---|---|")
    for label, v in rows:
        print(f"| {label} | {round(v / n):,} |".replace(f"{round(v / n):,}", f"{round(v / n):,}".replace(",", " ")))


if __name__ == "__main__":
    main()
