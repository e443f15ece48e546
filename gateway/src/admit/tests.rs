//! One row per refusal kind and per ordering rule of `admit`, without sockets.

use std::time::{Duration, SystemTime};

use keyring::{Keyring, VerifyError};

use super::*;
use crate::config::Config;

const KEYS: &str =
    "signing_kid: k1\nkeys:\n  - kid: k1\n    secret: \"0123456789abcdef0123456789abcdef01234567\"\n";

/// Trusts 10.0.0.0/8, routes /v1/, blocks 203.0.113.7 (written IPv4-mapped) and
/// u-mallory, and lets each client IP make 2 requests.
const CONFIG: &str = r#"
upstream: 127.0.0.1:8081
token_key_file: unused.yaml
trusted_proxies: ["10.0.0.0/8"]
routes: ["/v1/"]
limits:
  max_request_body_bytes: 100
block:
  clients: ["::ffff:203.0.113.7/128"]
  users: [u-mallory]
rate_limits:
  policies:
    - name: per-ip
      key: ip
      rate: 1/min
      burst: 2
"#;

fn live() -> (Live, Keyring) {
    let config = Config::parse("test.yaml", CONFIG).expect("test config");
    let keys = Keyring::from_yaml(KEYS).unwrap();
    let live = Live::with_keys(config, Keyring::from_yaml(KEYS).unwrap(), None).unwrap();
    (live, keys)
}

fn now() -> Now {
    let unix_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Now {
        mono_ns: 1_000_000_000,
        unix_secs,
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    for (name, value) in headers {
        req.append_header(name.to_string(), *value).unwrap();
    }
    req
}

type Outcome = Result<(), RefusalKind>;

const MALFORMED: AuthFailure = AuthFailure::Token(VerifyError::Malformed);

fn run(live: &Live, peer: &str, req: &RequestHeader) -> (Outcome, Admission) {
    match admit(live, peer.parse().unwrap(), req, now()) {
        Ok(found) => (Ok(()), found),
        Err(r) => (Err(r.kind), r.so_far),
    }
}

#[test]
fn refusal_kinds_and_their_order() {
    let (live, keys) = live();
    let sign = |sub: &str| {
        let token = keys.sign(sub, Duration::from_secs(60), SystemTime::now());
        format!("Bearer {token}")
    };
    let alice = sign("u-alice");
    let mallory = sign("u-mallory");
    let blocked = "203.0.113.7";
    use RefusalKind as K;
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, RequestHeader, Outcome)> = vec![
        ("admitted", "198.51.100.1", request("GET", "/v1/x", &[]), Ok(())),
        ("with a valid token", "198.51.100.2", request("GET", "/v1/x", &[("authorization", &alice)]), Ok(())),
        ("no route", "198.51.100.3", request("GET", "/metrics", &[]), Err(K::NoRoute)),
        ("ambiguous path", "198.51.100.4", request("GET", "/v1/../metrics", &[]), Err(K::AmbiguousPath)),
        ("ambiguous before route", "198.51.100.4", request("GET", "/x/%2e%2e/", &[]), Err(K::AmbiguousPath)),
        ("declared body over limit", "198.51.100.5", request("POST", "/v1/x", &[("content-length", "101")]), Err(K::BodyTooLarge)),
        ("declared body at limit", "198.51.100.5", request("POST", "/v1/x", &[("content-length", "100")]), Ok(())),
        ("blocked client (mapped entry, v4 peer)", blocked, request("GET", "/v1/x", &[]), Err(K::Blocked(BlockReason::Client))),
        ("blocked client on a bad path: 403 not 400", blocked, request("GET", "/v1/../x", &[]), Err(K::Blocked(BlockReason::Client))),
        ("blocked client over body limit: 403 not 413", blocked, request("POST", "/v1/x", &[("content-length", "999")]), Err(K::Blocked(BlockReason::Client))),
        ("blocked client via trusted proxy", "10.0.0.1", request("GET", "/v1/x", &[("x-forwarded-for", blocked)]), Err(K::Blocked(BlockReason::Client))),
        ("blocked user", "198.51.100.6", request("GET", "/v1/x", &[("authorization", &mallory)]), Err(K::Blocked(BlockReason::User))),
        ("unmatched route before identity", "198.51.100.6", request("GET", "/nope", &[("authorization", &mallory)]), Err(K::NoRoute)),
        ("refused token", "198.51.100.7", request("GET", "/v1/x", &[("authorization", "Bearer nope")]), Err(K::InvalidToken(MALFORMED))),
        ("other scheme", "198.51.100.8", request("GET", "/v1/x", &[("authorization", "Basic YTpi")]), Err(K::InvalidToken(AuthFailure::UnsupportedScheme))),
    ];
    for (name, peer, req, want) in cases {
        let (got, _) = run(&live, peer, &req);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn refused_tokens_are_charged_to_ip_limits_first() {
    let (live, _) = live();
    let bad = request("GET", "/v1/x", &[("authorization", "Bearer nope")]);
    let peer = "198.51.100.20";
    let kinds: Vec<Outcome> = (0..3).map(|_| run(&live, peer, &bad).0).collect();
    assert_eq!(
        kinds,
        [
            Err(RefusalKind::InvalidToken(MALFORMED)),
            Err(RefusalKind::InvalidToken(MALFORMED)),
            // Over the per-IP limit: 429, not 401.
            Err(RefusalKind::RateLimited),
        ]
    );
    let (got, found) = run(&live, peer, &request("GET", "/v1/x", &[]));
    assert_eq!(
        got,
        Err(RefusalKind::RateLimited),
        "the refused tokens were charged"
    );
    let verdict = found.verdict.expect("limits ran");
    assert_eq!(verdict.rejection().map(|o| &*o.policy), Some("per-ip"));
}

#[test]
fn refusals_before_the_limits_charge_nothing() {
    let (live, _) = live();
    let peer = "198.51.100.30";
    for _ in 0..5 {
        let (got, found) = run(&live, peer, &request("GET", "/nope", &[]));
        assert_eq!(got, Err(RefusalKind::NoRoute));
        assert!(found.verdict.is_none());
    }
    assert_eq!(run(&live, peer, &request("GET", "/v1/x", &[])).0, Ok(()));
}

#[test]
fn request_id_is_kept_only_from_trusted_peers() {
    let (live, _) = live();
    let with_id = |id: &str| request("GET", "/v1/x", &[("x-request-id", id)]);
    let xff = |id: &str| {
        request(
            "GET",
            "/v1/x",
            &[("x-request-id", id), ("x-forwarded-for", "198.51.100.40")],
        )
    };
    // (peer, request, id kept?)
    let cases = [
        ("10.0.0.1", with_id("abc-123"), true),
        ("10.0.0.1", xff("abc-124"), true),
        ("198.51.100.41", with_id("abc-125"), false),
        ("198.51.100.42", xff("abc-126"), false),
        ("10.0.0.1", with_id("bad id"), false),
        ("10.0.0.1", with_id(&"x".repeat(65)), false),
    ];
    for (peer, req, kept) in cases {
        let sent = req
            .headers
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let (_, found) = run(&live, peer, &req);
        assert_eq!(found.request_id == sent, kept, "{peer} {sent:?}");
        assert!(edgekit::is_valid_request_id(found.request_id.as_bytes()));
    }
    // Refused requests carry their id too (the answer and the log line use it).
    let (got, found) = run(
        &live,
        "10.0.0.1",
        &request("GET", "/nope", &[("x-request-id", "r-1")]),
    );
    assert_eq!(
        (got, found.request_id.as_str()),
        (Err(RefusalKind::NoRoute), "r-1")
    );
}

#[test]
fn refusal_kinds_map_to_edge_errors() {
    let cases = [
        (RefusalKind::Blocked(BlockReason::Client), 403),
        (RefusalKind::Blocked(BlockReason::User), 403),
        (RefusalKind::AmbiguousPath, 400),
        (RefusalKind::NoRoute, 404),
        (RefusalKind::BodyTooLarge, 413),
        (RefusalKind::RateLimited, 429),
        (RefusalKind::TooManyInFlight, 429),
        (
            RefusalKind::InvalidToken(AuthFailure::Token(VerifyError::Expired)),
            401,
        ),
    ];
    for (kind, status) in cases {
        assert_eq!(kind.edge_error().status, status, "{kind:?}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    let cases = [
        ("/v1/documents", false),
        ("/v1/documents/abc", false),
        ("/v1/a.b/c..d", false),
        ("/v1/../metrics", true),
        ("/v1/./documents", true),
        ("/v1/..", true),
        ("/v1//documents", true),
        ("/v1/%2e%2e/metrics", true),
        ("/v1/%2E./x", true),
        ("/v1/a%2fb", true),
        ("/v1/a\\b", true),
        ("/v1/a%00", true),
        ("v1/x", true),
        ("", true),
    ];
    for (path, want) in cases {
        assert_eq!(is_ambiguous_path(path), want, "{path}");
    }
}

#[test]
fn has_request_body_table() {
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[], false),
        (&[("content-length", "0")], false),
        (&[("content-length", "12")], true),
        (&[("Content-Length", "00")], true), // not literally 0: treat as a body, close
        (&[("transfer-encoding", "chunked")], true),
        (
            &[("transfer-encoding", "chunked"), ("content-length", "0")],
            true,
        ),
        (&[("x-content-length", "5")], false),
    ];
    for (headers, want) in cases {
        assert_eq!(
            has_request_body(&request("POST", "/v1/x", headers)),
            *want,
            "{headers:?}"
        );
    }
}

/// The one-pass check agrees with the plain statement of the rule (lower-case, split,
/// search) on hostile paths and on every short path over an alphabet of the bytes that
/// matter.
#[test]
fn ambiguous_path_matches_the_rule_as_written() {
    fn as_written(path: &str) -> bool {
        let b = path.as_bytes();
        if b.first() != Some(&b'/') || b.contains(&b'\\') || path.contains("//") {
            return true;
        }
        if path.split('/').any(|seg| seg == "." || seg == "..") {
            return true;
        }
        let lower = path.to_ascii_lowercase();
        ["%2e", "%2f", "%5c", "%00"]
            .iter()
            .any(|p| lower.contains(p))
    }
    let hostile = [
        "",
        "/",
        "//",
        "/.",
        "/..",
        "/...",
        "/v1/.",
        "/v1/..",
        "/v1/./x",
        "/v1/../x",
        "/v1/.x",
        "/v1/x.",
        "/v1/%",
        "/v1/%2",
        "/v1/%2E",
        "/v1/%2e%2e/",
        "/v1/%2F",
        "/v1/%5C",
        "/v1/%5c",
        "/v1/%00",
        "/v1/%0",
        "/v1/%%2e",
        "/v1/%25%32%65",
        "/v1/a%2",
        "/v1\\x",
        "v1/",
        ".",
        "/v1/ü/..",
        "/v1/é%2e",
        "/v1//",
        "/v1/x/",
        "/%2f",
        "/%",
    ];
    for path in hostile {
        assert_eq!(is_ambiguous_path(path), as_written(path), "{path:?}");
    }
    let alphabet = ['/', '.', '%', '2', 'e', 'E', 'f', '5', 'c', '0', '\\', 'a'];
    let mut paths = vec![String::new()];
    for _ in 0..5 {
        let longer: Vec<String> = paths
            .iter()
            .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
            .collect();
        for p in &longer {
            assert_eq!(is_ambiguous_path(p), as_written(p), "{p:?}");
        }
        paths = longer;
    }
}

/// Stage 5b: two requests in flight per client (IPv6 by /64), exempt CIDRs not counted;
/// a slot frees when the admission (the request's state) is dropped.
#[test]
fn in_flight_cap_per_client() {
    let config = Config::parse(
        "test.yaml",
        "upstream: 127.0.0.1:8081\ntoken_key_file: unused.yaml\nroutes: [\"/v1/\"]\n\
         limits:\n  max_in_flight_per_client: 2\n\
         rate_limits:\n  ipv6_prefix: 64\n  exempt: [\"192.0.2.0/24\"]\n",
    )
    .expect("test config");
    let live = Live::with_keys(config, Keyring::from_yaml(KEYS).unwrap(), None).unwrap();
    let req = request("GET", "/v1/x", &[]);
    let (a1, held1) = run(&live, "198.51.100.1", &req);
    let (a2, held2) = run(&live, "::ffff:198.51.100.1", &req);
    assert_eq!((a1, a2), (Ok(()), Ok(())), "mapped IPv4 is the same client");
    assert_eq!(
        run(&live, "198.51.100.1", &req).0,
        Err(RefusalKind::TooManyInFlight)
    );
    assert_eq!(run(&live, "198.51.100.2", &req).0, Ok(()), "another client");
    // Refused before the cap: holds nothing.
    let (nope, none) = run(&live, "198.51.100.1", &request("GET", "/nope", &[]));
    assert_eq!(
        (nope, none.inflight.is_none()),
        (Err(RefusalKind::NoRoute), true)
    );
    drop(held1);
    let (again, _held3) = run(&live, "198.51.100.1", &req);
    assert_eq!(again, Ok(()), "a finished request frees its slot");
    drop(held2);

    let v6: Vec<_> = ["2001:db8:1:1::1", "2001:db8:1:1::2"]
        .iter()
        .map(|ip| run(&live, ip, &req))
        .collect();
    assert!(v6.iter().all(|(o, _)| o.is_ok()));
    assert_eq!(
        run(&live, "2001:db8:1:1:ffff::3", &req).0,
        Err(RefusalKind::TooManyInFlight),
        "same /64"
    );
    assert_eq!(run(&live, "2001:db8:1:2::1", &req).0, Ok(()), "next /64");

    let exempt: Vec<_> = (0..10).map(|_| run(&live, "192.0.2.9", &req)).collect();
    assert!(exempt
        .iter()
        .all(|(o, a)| o.is_ok() && a.inflight.is_none()));

    // A reload keeps the counts (the sketch is carried over) and applies the new cap.
    let bigger = Config::parse(
        "test.yaml",
        "upstream: 127.0.0.1:8081\ntoken_key_file: unused.yaml\nroutes: [\"/v1/\"]\n\
         limits:\n  max_in_flight_per_client: 3\n",
    )
    .unwrap();
    let reloaded = Live::with_keys(bigger, Keyring::from_yaml(KEYS).unwrap(), Some(&live)).unwrap();
    let (third, _h) = run(&reloaded, "2001:db8:1:1::9", &req);
    assert_eq!(third, Ok(()), "cap 3 now");
    assert_eq!(
        run(&reloaded, "2001:db8:1:1::9", &req).0,
        Err(RefusalKind::TooManyInFlight),
        "the two held before the reload still count"
    );
    drop(v6);
}
