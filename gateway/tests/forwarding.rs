//! What the upstream sees: client IP from trusted chains only, spoofed headers
//! stripped, one canonical set of forwarded headers. Real gateway process, stub
//! upstream, 127.0.0.2 as the trusted proxy and 127.0.0.3 as an untrusted client.

mod common;

use common::*;

const TRUSTED: &str = "127.0.0.2";
const UNTRUSTED: &str = "127.0.0.3";

struct Case {
    name: &'static str,
    from: &'static str,
    headers: &'static [(&'static str, &'static str)],
    want_real_ip: &'static str,
    want_xff: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "untrusted, no headers",
        from: UNTRUSTED,
        headers: &[],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "untrusted spoofs XFF",
        from: UNTRUSTED,
        headers: &[("X-Forwarded-For", "1.2.3.4")],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "untrusted spoofs X-Real-IP",
        from: UNTRUSTED,
        headers: &[("X-Real-IP", "1.2.3.4")],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "untrusted spoofs Forwarded",
        from: UNTRUSTED,
        headers: &[("Forwarded", "for=1.2.3.4")],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "untrusted spoofs X-Forwarded-Proto",
        from: UNTRUSTED,
        headers: &[("X-Forwarded-Proto", "https")],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "untrusted underscore spelling",
        from: UNTRUSTED,
        headers: &[("X_Forwarded_For", "1.2.3.4")],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "untrusted True-Client-IP",
        from: UNTRUSTED,
        headers: &[("True-Client-IP", "1.2.3.4")],
        want_real_ip: UNTRUSTED,
        want_xff: UNTRUSTED,
    },
    Case {
        name: "trusted single hop",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "203.0.113.7")],
        want_real_ip: "203.0.113.7",
        want_xff: "203.0.113.7, 127.0.0.2",
    },
    Case {
        name: "trusted, spoofed left entry dropped",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "6.6.6.6, 203.0.113.7")],
        want_real_ip: "203.0.113.7",
        want_xff: "203.0.113.7, 127.0.0.2",
    },
    Case {
        name: "trusted, two XFF lines joined",
        from: TRUSTED,
        headers: &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "203.0.113.8"),
        ],
        want_real_ip: "203.0.113.8",
        want_xff: "203.0.113.8, 127.0.0.2",
    },
    Case {
        name: "trusted chain through inner proxy",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "203.0.113.9, 10.0.0.5")],
        want_real_ip: "203.0.113.9",
        want_xff: "203.0.113.9, 10.0.0.5, 127.0.0.2",
    },
    Case {
        name: "trusted, port stripped",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "203.0.113.10:5555")],
        want_real_ip: "203.0.113.10",
        want_xff: "203.0.113.10, 127.0.0.2",
    },
    Case {
        name: "trusted, IPv6 bracketed with port",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "[2001:db8::1]:443")],
        want_real_ip: "2001:db8::1",
        want_xff: "2001:db8::1, 127.0.0.2",
    },
    Case {
        name: "trusted, IPv4-mapped canonicalised",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "::ffff:203.0.113.11")],
        want_real_ip: "203.0.113.11",
        want_xff: "203.0.113.11, 127.0.0.2",
    },
    Case {
        name: "trusted, garbage at boundary falls back",
        from: TRUSTED,
        headers: &[("X-Forwarded-For", "203.0.113.12, not-an-ip")],
        want_real_ip: TRUSTED,
        want_xff: TRUSTED,
    },
    Case {
        name: "trusted, RFC 7239",
        from: TRUSTED,
        headers: &[("Forwarded", "for=\"[2001:db8:cafe::17]:4711\";proto=https")],
        want_real_ip: "2001:db8:cafe::17",
        want_xff: "2001:db8:cafe::17, 127.0.0.2",
    },
    Case {
        name: "trusted, RFC 7239 unknown falls back",
        from: TRUSTED,
        headers: &[("Forwarded", "for=unknown")],
        want_real_ip: TRUSTED,
        want_xff: TRUSTED,
    },
    Case {
        name: "trusted, XFF preferred over Forwarded",
        from: TRUSTED,
        headers: &[
            ("Forwarded", "for=198.51.100.1"),
            ("X-Forwarded-For", "198.51.100.2"),
        ],
        want_real_ip: "198.51.100.2",
        want_xff: "198.51.100.2, 127.0.0.2",
    },
    Case {
        name: "trusted, no header",
        from: TRUSTED,
        headers: &[],
        want_real_ip: TRUSTED,
        want_xff: TRUSTED,
    },
];

#[tokio::test]
async fn upstream_sees_the_validated_client_ip() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "trusted_proxies: [127.0.0.2/32, 10.0.0.0/8]\n");
    for case in CASES {
        let resp = get_from(case.from, gw.addr, "/v1/echo", case.headers).await;
        assert_eq!(resp.status, 200, "{}: {}", case.name, resp.text());
        let seen = stub.last_headers();
        assert_eq!(
            header_values(&seen, "x-real-ip"),
            vec![case.want_real_ip],
            "{}",
            case.name
        );
        assert_eq!(
            header_values(&seen, "x-forwarded-for"),
            vec![case.want_xff],
            "{}",
            case.name
        );
        // Cleartext listener: http, unless a trusted peer says (validly) it saw https.
        let says_https = case.headers.iter().any(|(_, v)| v.contains("proto=https"));
        let want_proto = if case.from == TRUSTED && says_https {
            "https"
        } else {
            "http"
        };
        assert_eq!(
            header_values(&seen, "x-forwarded-proto"),
            vec![want_proto],
            "{}",
            case.name
        );
        for spoof in ["forwarded", "x_forwarded_for", "true-client-ip"] {
            assert!(
                header_values(&seen, spoof).is_empty(),
                "{}: {spoof} leaked upstream",
                case.name
            );
        }
        let rid = resp.header("x-request-id").expect("request id echoed");
        assert_eq!(
            header_values(&seen, "x-request-id"),
            vec![rid],
            "{}",
            case.name
        );
    }
    // Upstream connections are pooled: far fewer connections than requests.
    let upstream_conns = stub.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        upstream_conns <= 2,
        "{upstream_conns} upstream connections for {} requests",
        CASES.len()
    );
    let spoofs = gw.metric_sum(
        "gateway_forwarded_header_rejections_total",
        &[("reason", "untrusted_peer")],
    );
    assert_eq!(spoofs, 6.0, "six untrusted spoof cases counted");
    let logs = gw.proc.access_logs();
    assert!(logs
        .iter()
        .any(|l| l["trust"] == "untrusted_peer_spoof" && l["client_ip"] == UNTRUSTED));
    assert!(logs
        .iter()
        .any(|l| l["trust"] == "malformed" && l["forwarded_rejection"] == "malformed"));
}

#[tokio::test]
async fn hop_by_hop_and_nominated_headers_are_removed_and_request_id_policy_holds() {
    let stub = Stub::start(StubMode::Echo).await;
    let gw = GatewayProc::start(stub.addr, "trusted_proxies: [127.0.0.2/32]\n");
    let resp = get_from(
        UNTRUSTED,
        gw.addr,
        "/v1/x",
        &[
            ("Connection", "X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("X-Request-Id", "client-chosen"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = stub.last_headers();
    assert!(header_values(&seen, "x-secret-hop").is_empty());
    assert!(header_values(&seen, "keep-alive").is_empty());
    // An untrusted client cannot choose the request id.
    assert_ne!(resp.header("x-request-id"), Some("client-chosen"));
    // A trusted proxy's well-formed id is kept; a malformed one is replaced.
    let kept = with_request_id(gw.addr, "lb-1234.abc").await;
    assert_eq!(kept.header("x-request-id"), Some("lb-1234.abc"));
    assert_eq!(
        header_values(&stub.last_headers(), "x-request-id"),
        vec!["lb-1234.abc"]
    );
    let replaced = with_request_id(gw.addr, "bad id with spaces").await;
    assert_ne!(replaced.header("x-request-id"), Some("bad id with spaces"));
}

/// A GET from the trusted proxy carrying `id` as its X-Request-Id.
async fn with_request_id(gw: std::net::SocketAddr, id: &str) -> Response {
    get_from(TRUSTED, gw, "/v1/x", &[("X-Request-Id", id)]).await
}
