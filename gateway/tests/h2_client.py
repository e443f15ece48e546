#!/usr/bin/env python3
"""HTTP/2 clients for gateway/tests/tls.rs, over TLS with ALPN h2 (Python's h2 package).

    h2_client.py MODE PORT [N] [SECONDS]

normal N            N sequential GETs on one connection; prints latencies (ms) p50/p99
idle N S            N GETs, then silence: how long until the server closes (at most S s)
no-pong N S         a POST whose body never comes, then never reads (so never answers PING)
open-empty N S      a POST with content-length 0 whose stream never ends; waits (at most S s)
                    for the answer, answering PINGs
post N              one POST with an N-byte body; prints the response status, headers, body
trailers N KIND     one POST with an N-byte body (KIND ending in "-cl": with content-length),
                    then a trailer section: pseudo (:path), connection, te (gzip),
                    content-length (mismatched) or valid; prints the status or how it ended
rapid-reset N S     HEADERS + RST_STREAM pairs, up to N or S seconds (CVE-2023-44487)
rapid-reset-loop N S  rapid-reset, reconnecting after each close (at most 10 a second), for S s
ping-flood N S      PING frames
continuation N S    one HEADERS without END_HEADERS, then empty CONTINUATION frames
slow-headers N S    one HEADERS without END_HEADERS, then one 1-byte CONTINUATION per second
handshake-flood N S SRC  new TLS connections from address SRC, unpaced, each closed after its
                    handshake, up to N or S seconds; counts handshakes done and refused

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
import h2.exceptions
import hpack

PATH = "/v1/documents"


def connect(port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    # Without it Nagle holds our second small write (WINDOW_UPDATE, then the next HEADERS)
    # for the server's delayed ACK: 40 ms steps in the latencies, nothing to do with the gateway.
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def flood(port, n, seconds, mode, report=True):
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
    result = {"closed": done, "seconds": round(time.monotonic() - start, 3), "sent": sent}
    if report:
        print(json.dumps(result))
    return result


def flood_loop(port, n, seconds):
    """Sustained attack: every connection floods until cut; counts the connections."""
    start, runs = time.monotonic(), []
    while time.monotonic() - start < seconds and len(runs) < 1000:
        began = time.monotonic()
        runs.append(flood(port, n, seconds - (began - start), "rapid-reset", False))
        time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
    print(json.dumps({"connections": len(runs), "closed": sum(r["closed"] for r in runs),
                      "sent": sum(r["sent"] for r in runs),
                      "seconds": round(time.monotonic() - start, 3)}))


def handshake_flood(port, n, seconds, source):
    """Unpaced reconnects: every attempt asks for a full handshake, then hangs up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    start, done, refused = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds and done + refused < n:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=2,
                                           source_address=(source, 0))
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                done += 1
        except OSError:
            refused += 1
    print(json.dumps({"handshakes": done, "refused": refused,
                      "seconds": round(time.monotonic() - start, 3)}))


def idle(port, n, seconds):
    s, conn = connect(port)
    if n:
        get_all(s, conn, port, n)
    start = time.monotonic()
    done = closed(s, seconds)
    print(json.dumps({"closed": done, "seconds": round(time.monotonic() - start, 3)}))


def no_pong(port, seconds):
    s, conn = connect(port)
    hs = headers(port)
    hs[0] = (":method", "POST")
    conn.send_headers(1, hs, end_stream=False)
    s.sendall(conn.data_to_send())
    start = time.monotonic()
    # Only look for EOF: reading frames through `conn` would answer the PINGs.
    done = False
    s.settimeout(seconds)
    try:
        while time.monotonic() - start < seconds:
            if not s.recv(65536):
                done = True
                break
    except (socket.timeout, ssl.SSLError, OSError):
        done = not isinstance(sys.exc_info()[1], socket.timeout)
    print(json.dumps({"closed": done, "seconds": round(time.monotonic() - start, 3)}))


def answer(s, conn, seconds):
    """Reads stream 1's answer (answering PINGs) for at most `seconds`: its status, or how
    the stream or connection ended."""
    result = {"status": None, "reset": False, "closed": False}
    start = time.monotonic()
    s.settimeout(seconds)
    try:
        while result["status"] is None and not result["reset"] and time.monotonic() - start < seconds:
            data = s.recv(65536)
            if not data:
                result["closed"] = True
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    result["status"] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.StreamReset):
                    result["reset"] = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    result["closed"] = True
            s.sendall(conn.data_to_send())
    except socket.timeout:
        result["timeout"] = True
    except (ConnectionError, ssl.SSLError, OSError, h2.exceptions.ProtocolError):
        result["closed"] = True
    result["seconds"] = round(time.monotonic() - start, 3)
    return result


def open_empty(port, seconds):
    s, conn = connect(port)
    hs = headers(port)
    hs[0] = (":method", "POST")
    conn.send_headers(1, hs + [("content-length", "0")], end_stream=False)
    s.sendall(conn.data_to_send())
    print(json.dumps(answer(s, conn, seconds)))


def post(port, n):
    """Unlike curl 7.88, reads a complete response even if RST_STREAM(NO_ERROR) follows it,
    as RFC 9113 §8.1 lets a server answer before the body is in."""
    s, conn = connect(port)
    hs = headers(port)
    hs[0] = (":method", "POST")
    conn.send_headers(1, hs + [("content-length", str(n))], end_stream=False)
    conn.send_data(1, b"b" * n, end_stream=True)
    s.sendall(conn.data_to_send())
    status, head, body, done, reset = None, {}, b"", False, None
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                head = {k.decode(): v.decode() for k, v in ev.headers}
                status = int(head.get(":status", 0))
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
            elif isinstance(ev, h2.events.StreamReset):
                reset, done = int(ev.error_code), True
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
                # An RST_STREAM right behind the answer: read it too, briefly.
                s.settimeout(0.2)
                try:
                    for ev2 in conn.receive_data(s.recv(65536)):
                        if isinstance(ev2, h2.events.StreamReset):
                            reset = int(ev2.error_code)
                except (socket.timeout, ssl.SSLError, OSError):
                    pass
        s.sendall(conn.data_to_send())
    print(json.dumps({"status": status, "headers": head, "body": body.decode(errors="replace"),
                      "reset": reset}))


TRAILERS = {
    "pseudo": [(":path", "/v1/other")],
    "connection": [("connection", "close")],
    "te": [("te", "gzip")],
    "content-length": [("content-length", "1")],
    "valid": [("x-checksum", "abc")],
}


def trailers(port, n, kind):
    """A body, then a trailer section sent unchecked by our side (no outbound validation)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                       normalize_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    hs = headers(port)
    hs[0] = (":method", "POST")
    if kind.endswith("-cl"):
        hs.append(("content-length", str(n)))
    conn.send_headers(1, hs, end_stream=False)
    conn.send_data(1, b"t" * n, end_stream=False)
    s.sendall(conn.data_to_send())
    # The body first, on its own: the upstream may already hold every byte of it.
    time.sleep(0.3)
    conn.send_headers(1, TRAILERS[kind.removesuffix("-cl")], end_stream=True)
    s.sendall(conn.data_to_send())
    print(json.dumps(answer(s, conn, 3)))


def normal(port, n):
    s, conn = connect(port)
    lat = get_all(s, conn, port, n)
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(json.dumps({"n": n, "p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3)}))


def get_all(s, conn, port, n):
    """N sequential GETs; their latencies in ms."""
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
    return lat


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 and mode != "trailers" else 10.0
    if mode == "normal":
        normal(port, n)
    elif mode == "post":
        post(port, n)
    elif mode == "trailers":
        trailers(port, n, sys.argv[4])
    elif mode == "no-pong":
        no_pong(port, seconds)
    elif mode == "open-empty":
        open_empty(port, seconds)
    elif mode == "idle":
        idle(port, n, seconds)
    elif mode == "handshake-flood":
        handshake_flood(port, n, seconds, sys.argv[5])
    elif mode == "rapid-reset-loop":
        flood_loop(port, n, seconds)
    else:
        flood(port, n, seconds, mode)
