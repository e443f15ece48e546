//! Admit: the admission pipeline, `admit`, decides without sockets, metrics or I/O whether
//! a request goes upstream. Stages run in a fixed order and the order is part of the contract:
//!
//! 1. client IP (forwarded headers believed only from trusted peers);
//! 2. request id (a trusted peer's well-formed one is kept, else a new one);
//! 3. client block list (403 before anything else can answer);
//! 4. ambiguous path (400), then the route allowlist (404);
//! 5. declared body size (413, before a byte of body is read);
//! 6. the per-client in-flight cap (429 `too_many_in_flight`): the slot is held in the
//!    `Admission` until the request ends;
//! 7. identity, then the user block list (403);
//! 8. rate limits (429);
//! 9. a refused token (401) — after the limits, so refused tokens are still charged to
//!    the per-IP and global policies and guessing tokens is throttled like anything else.
//!
//! The pingora adapter (`forward::proxy`) records metrics and answers from the result.

pub mod admin_token;
pub mod blocklist;
pub mod client_ip;
pub mod exact;
pub mod identity;
pub mod inflight;
pub mod limits;
pub mod net;

use std::net::IpAddr;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

use crate::admit::blocklist::BlockReason;
use crate::admit::client_ip::{Resolution, TrustDecision};
use crate::admit::identity::{AuthFailure, Identity};
use crate::admit::inflight::Claim;
use crate::admit::limits::{RequestFacts, Verdict};
use crate::state::Live;
use pingora_limits::inflight::Guard;

/// The clocks the pipeline reads, injected so tests control them.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic nanoseconds, for the limiter.
    pub mono_ns: u64,
    /// Unix seconds, for token expiry.
    pub unix_secs: u64,
}

impl Now {
    /// The process's clocks now.
    pub fn read() -> Now {
        let unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Now {
            mono_ns: Now::mono_ns(),
            unix_secs,
        }
    }

    /// Unix ns of a `mono_ns` instant: the offset is fixed once per process, so differences
    /// between instants stay exactly the monotonic ones (what the limiter saw).
    pub fn unix_ns_of(mono_ns: u64) -> u64 {
        static OFFSET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let offset = *OFFSET.get_or_init(|| {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            unix.saturating_sub(Now::mono_ns())
        });
        mono_ns.saturating_add(offset)
    }

    /// Monotonic nanoseconds: the shared-limits sync loop corrects the same TATs, so it
    /// must be one clock with it.
    pub fn mono_ns() -> u64 {
        crate::admit::limits::shared::monotonic_ns()
    }
}

/// What the pipeline established about a request (in a `Refusal`: as far as it got).
#[derive(Debug)]
pub struct Admission {
    pub resolution: Resolution,
    pub request_id: String,
    /// Index into `config.routes`.
    pub route: Option<usize>,
    pub identity: Identity,
    /// `None` when the request was refused before the limits ran.
    pub verdict: Option<Verdict>,
    /// The in-flight slot (`None`: exempt, or refused before the cap ran). Dropping it
    /// frees the slot, so whoever owns the request's state frees it however it ends.
    pub inflight: Option<Guard>,
}

/// Why a request is answered at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    Blocked(BlockReason),
    AmbiguousPath,
    NoRoute,
    BodyTooLarge,
    TooManyInFlight,
    RateLimited,
    /// A presented credential did not verify.
    InvalidToken(AuthFailure),
}

#[derive(Debug)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub so_far: Admission,
}

/// Runs the stages in order (module docs); `peer` is the socket peer.
// Err is no larger than Ok (it carries the Admission so far); boxing it would cost an
// allocation per refused request for nothing.
#[allow(clippy::result_large_err)]
pub fn admit(
    live: &Live,
    peer: IpAddr,
    req: &RequestHeader,
    now: Now,
) -> Result<Admission, Refusal> {
    let resolution = client_ip::resolve(peer, &req.headers, &live.client_ip);
    let request_id = request_id(req, resolution.decision);
    let client = resolution.client;
    let mut found = Admission {
        resolution,
        request_id,
        route: None,
        identity: Identity::Anonymous,
        verdict: None,
        inflight: None,
    };
    let refuse = |kind, so_far| Err(Refusal { kind, so_far });

    if let Some(reason) = live.blocklist.client(client) {
        return refuse(RefusalKind::Blocked(reason), found);
    }
    let path = req.uri.path();
    if is_ambiguous_path(path) {
        return refuse(RefusalKind::AmbiguousPath, found);
    }
    found.route = live.config.routes.iter().position(|r| r.matches(path));
    if found.route.is_none() {
        return refuse(RefusalKind::NoRoute, found);
    }
    if declared_body_len(req).is_some_and(|n| n > live.config.limits.max_request_body_bytes) {
        return refuse(RefusalKind::BodyTooLarge, found);
    }
    let cap = live.config.limits.max_in_flight_per_client;
    match live.inflight.admit(live.limiter.client_group(client), cap) {
        Claim::Admitted(guard) => found.inflight = Some(guard),
        Claim::Exempt => {}
        Claim::Refused => return refuse(RefusalKind::TooManyInFlight, found),
    }

    found.identity =
        identity::identify_cached(&req.headers, &live.keys, &live.tokens, now.unix_secs);
    if let Some(reason) = live.blocklist.user(found.identity.user_id()) {
        return refuse(RefusalKind::Blocked(reason), found);
    }

    let facts = RequestFacts {
        method: req.method.as_str(),
        path,
        client_ip: client,
        user: found.identity.user_id(),
    };
    let verdict = live.limiter.check(&facts, now.mono_ns);
    let rejected = verdict.is_rejected();
    found.verdict = Some(verdict);
    if rejected {
        return refuse(RefusalKind::RateLimited, found);
    }
    if let Identity::Rejected(reason) = found.identity {
        return refuse(RefusalKind::InvalidToken(reason), found);
    }
    Ok(found)
}

/// Keeps a trusted peer's well-formed `X-Request-Id`, else mints one.
fn request_id(req: &RequestHeader, trust: TrustDecision) -> String {
    match req.headers.get("x-request-id") {
        Some(v)
            if trust != TrustDecision::Direct
                && trust != TrustDecision::UntrustedPeerSpoof
                && edgekit::is_valid_request_id(v.as_bytes()) =>
        {
            // Valid ids are ASCII by construction.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => edgekit::new_request_id(),
    }
}

/// A body follows the head (chunked, or a non-zero Content-Length): an answer that does
/// not read it must close the connection, or the body would be parsed as the next request.
pub fn has_request_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `Content-Length` when present and a number; a malformed one is pingora's to refuse.
pub fn declared_body_len(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Paths with dot segments, encoded slashes/dots or backslashes could be
/// normalised by someone downstream into a route we did not allow. One pass over the
/// bytes: not starting with `/`, a backslash, an empty segment (`//`), a `.` or `..` segment,
/// or `%2e` `%2f` `%5c` `%00` in any case.
pub fn is_ambiguous_path(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return true;
    }
    let dot_segment = |seg: &[u8]| seg == b"." || seg == b"..";
    let mut seg_start = 1;
    for i in 1..b.len() {
        match b[i] {
            b'\\' => return true,
            b'/' => {
                if b[i - 1] == b'/' || dot_segment(&b[seg_start..i]) {
                    return true;
                }
                seg_start = i + 1;
            }
            b'%' => {
                if let [hi, lo, ..] = &b[i + 1..] {
                    let code = (*hi, lo.to_ascii_lowercase());
                    if matches!(code, (b'2', b'e' | b'f') | (b'5', b'c') | (b'0', b'0')) {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    dot_segment(&b[seg_start..])
}

#[cfg(test)]
mod tests;
