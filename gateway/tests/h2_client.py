#!/usr/bin/env python3
"""HTTP/2 clients for gateway/tests/tls.rs, over TLS with ALPN h2 (Python's h2 package).

    h2_client.py MODE PORT [N] [SECONDS]

normal N            N sequential GETs on one connection; prints latencies (ms) p50/p99
rapid-reset N S     HEADERS + RST_STREAM pairs, up to N or S seconds (CVE-2023-44487)
ping-flood N S      PING frames
continuation N S    one HEADERS without END_HEADERS, then empty CONTINUATION frames
slow-headers N S    one HEADERS without END_HEADERS, then one 1-byte CONTINUATION per second

Every mode is bounded (count and wall time) and prints one JSON line: whether the server
closed the connection, after how long, and how much was sent.
"""
import json
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import hpack

PATH = "/v1/documents"


def connect(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def headers(port):
    return [(":method", "GET"), (":path", PATH), (":scheme", "https"),
            (":authority", "localhost:%d" % port)]


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def closed(s, wait=0.0):
    """True once the server has closed (EOF, reset, or GOAWAY read)."""
    s.settimeout(wait)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
            # GOAWAY frame type 0x7 anywhere in what we read: the server is closing.
            if b"\x07\x00\x00\x00\x00\x00" in data:
                return True
    except (socket.timeout, ssl.SSLWantReadError, BlockingIOError):
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


def flood(port, n, seconds, mode):
    s, conn = connect(port)
    start = time.monotonic()
    sent, stream = 0, 1
    block = hpack.Encoder().encode(headers(port))
    if mode in ("continuation", "slow-headers"):
        s.sendall(frame(0x1, 0x0, 1, block[:1]))
    done = False
    try:
        while sent < n and time.monotonic() - start < seconds and not done:
            if mode == "rapid-reset":
                conn.send_headers(stream, headers(port), end_stream=True)
                conn.reset_stream(stream)
                s.sendall(conn.data_to_send())
                stream += 2
            elif mode == "ping-flood":
                s.sendall(frame(0x6, 0x0, 0, b"12345678"))
            elif mode == "continuation":
                s.sendall(frame(0x9, 0x0, 1, b""))
            elif mode == "slow-headers":
                s.sendall(frame(0x9, 0x0, 1, block[1 + sent:2 + sent] or b"\x00"))
                done = closed(s, 1.0)
            sent += 1
            if sent % 20 == 0 and mode != "slow-headers":
                done = closed(s)
    except (ConnectionError, ssl.SSLError, OSError):
        done = True
    if not done:
        done = closed(s, max(0.0, min(3.0, seconds - (time.monotonic() - start))))
    print(json.dumps({"closed": done, "seconds": round(time.monotonic() - start, 3), "sent": sent}))


def normal(port, n):
    s, conn = connect(port)
    lat = []
    for i in range(n):
        stream = 1 + 2 * i
        t = time.monotonic()
        conn.send_headers(stream, headers(port), end_stream=True)
        s.sendall(conn.data_to_send())
        done = False
        while not done:
            data = s.recv(65536)
            if not data:
                raise SystemExit("server closed a normal client")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == stream:
                    done = True
            s.sendall(conn.data_to_send())
        lat.append((time.monotonic() - t) * 1000)
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(json.dumps({"n": n, "p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3)}))


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    if mode == "normal":
        normal(port, n)
    else:
        flood(port, n, seconds, mode)
