//! Every error a client sees: a short JSON body with the right status, never internals.

use std::fmt::Write as _;

use crate::admit::blocklist::BlockReason;
use crate::admit::identity::AuthFailure;
use crate::admit::RefusalKind;

/// One kind of edge error: status, stable code, short message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeError {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

macro_rules! edge_errors {
    ($($name:ident = $status:expr, $code:expr, $message:expr;)*) => {
        $(pub const $name: EdgeError = EdgeError { status: $status, code: $code, message: $message };)*
    };
}

/// Other modules' own error kinds (the admin port's) are declared the same way.
pub(crate) use edge_errors;

edge_errors! {
    BAD_REQUEST = 400, "bad_request", "The request could not be parsed.";
    UNAUTHORIZED = 401, "invalid_token", "The bearer token is malformed, expired or not valid.";
    FORBIDDEN = 403, "blocked", "Access denied.";
    NOT_FOUND = 404, "not_found", "No such route.";
    REQUEST_TIMEOUT = 408, "request_timeout", "The request was not received in time.";
    PAYLOAD_TOO_LARGE = 413, "payload_too_large", "The request body is too large.";
    RATE_LIMITED = 429, "rate_limited", "Too many requests; retry later.";
    TOO_MANY_IN_FLIGHT = 429, "too_many_in_flight", "Too many requests in progress from this client; retry when one has finished.";
    TOO_MANY_CONNECTIONS = 429, "too_many_connections", "Too many connections from this client; retry later.";
    HEADERS_TOO_LARGE = 431, "request_header_fields_too_large", "The request headers are too large.";
    BAD_GATEWAY = 502, "bad_gateway", "The upstream service is unavailable.";
    UNAVAILABLE = 503, "service_unavailable", "The gateway is not accepting requests right now.";
    GATEWAY_TIMEOUT = 504, "gateway_timeout", "The upstream service did not answer in time.";
}

impl EdgeError {
    /// `{"error":{"code":…,"message":…}}`, plus `"policy"` for rate limits.
    pub fn body(&self, policy: Option<&str>) -> String {
        let mut s = String::with_capacity(96);
        let _ = write!(
            s,
            r#"{{"error":{{"code":"{}","message":"{}""#,
            self.code, self.message
        );
        if let Some(p) = policy {
            // Policy names are validated to [a-z0-9_-]; escape anyway so a future change cannot break JSON.
            s.push_str(r#","policy":"#);
            s.push_str(&serde_json::to_string(p).unwrap_or_else(|_| "\"\"".into()));
        }
        s.push_str("}}");
        s
    }

    pub fn reason_phrase(&self) -> &'static str {
        http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
    }
}

/// Maps a pingora error to what the client should see when proxying failed.
pub fn for_proxy_failure(e: &pingora::Error) -> Option<EdgeError> {
    use pingora::{ErrorSource, ErrorType};
    match e.etype() {
        ErrorType::HTTPStatus(413) => return Some(PAYLOAD_TOO_LARGE),
        ErrorType::HTTPStatus(408) => return Some(REQUEST_TIMEOUT),
        ErrorType::HTTPStatus(code) if *code >= 400 => {
            return Some(match *code {
                400 => BAD_REQUEST,
                404 => NOT_FOUND,
                429 => RATE_LIMITED,
                431 => HEADERS_TOO_LARGE,
                503 => UNAVAILABLE,
                504 => GATEWAY_TIMEOUT,
                _ => BAD_GATEWAY,
            })
        }
        _ => {}
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                GATEWAY_TIMEOUT
            }
            _ => BAD_GATEWAY,
        }),
        ErrorSource::Downstream => match e.etype() {
            // The client is gone: nobody to answer.
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
            ErrorType::ReadTimedout => Some(REQUEST_TIMEOUT),
            _ => Some(BAD_REQUEST),
        },
        ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Some(GATEWAY_TIMEOUT)
            }
            ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute => {
                Some(BAD_GATEWAY)
            }
            _ => Some(BAD_GATEWAY),
        },
    }
}

/// A refusal, decided once: the answer the client gets, the access log's `error`, and the
/// counter it adds to (rate-limit refusals are counted per policy from the verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub answer: EdgeError,
    pub log_error: Option<ProxyError>,
    pub count: Option<RefusalCount>,
}

/// The refusal counters: `gateway_blocked_requests_total{reason}`,
/// `gateway_inflight_rejections_total`, `gateway_auth_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCount {
    InFlight,
    Blocked(BlockReason),
    AuthFailure(AuthFailure),
}

// `RefusalKind` is admit's; what a refusal means to the client, the log and the metrics is
// decided here, in one exhaustive match: a new kind does not compile until it is decided.
impl RefusalKind {
    pub fn refused(self) -> Refused {
        let (answer, log_error, count) = match self {
            RefusalKind::Blocked(r @ BlockReason::Client) => (
                FORBIDDEN,
                Some(ProxyError::BlockedClient),
                Some(RefusalCount::Blocked(r)),
            ),
            RefusalKind::Blocked(r @ BlockReason::User) => (
                FORBIDDEN,
                Some(ProxyError::BlockedUser),
                Some(RefusalCount::Blocked(r)),
            ),
            RefusalKind::AmbiguousPath => (BAD_REQUEST, None, None),
            RefusalKind::NoRoute => (NOT_FOUND, None, None),
            RefusalKind::BodyTooLarge => (PAYLOAD_TOO_LARGE, None, None),
            RefusalKind::TooManyInFlight => (
                TOO_MANY_IN_FLIGHT,
                Some(ProxyError::TooManyInFlight),
                Some(RefusalCount::InFlight),
            ),
            RefusalKind::RateLimited => (RATE_LIMITED, None, None),
            RefusalKind::InvalidToken(r) => {
                (UNAUTHORIZED, None, Some(RefusalCount::AuthFailure(r)))
            }
        };
        Refused {
            answer,
            log_error,
            count,
        }
    }

    /// The JSON error the client sees.
    pub fn edge_error(self) -> EdgeError {
        self.refused().answer
    }
}

/// The access log's `error` for a request the gateway failed or refused itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
    BlockedClient,
    BlockedUser,
    /// Over `limits.max_in_flight_per_client`.
    TooManyInFlight,
    /// A limit enforced while proxying (body over `max_request_body_bytes`).
    Limit,
    Timeout,
    Connect,
    Proxy,
}

impl ProxyError {
    pub const fn as_str(self) -> &'static str {
        match self {
            ProxyError::BlockedClient => "blocked_client",
            ProxyError::BlockedUser => "blocked_user",
            ProxyError::TooManyInFlight => "too_many_in_flight",
            ProxyError::Limit => "limit",
            ProxyError::Timeout => "timeout",
            ProxyError::Connect => "connect",
            ProxyError::Proxy => "proxy",
        }
    }
}

/// `gateway_upstream_errors_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    Timeout,
    Connect,
    Other,
}

impl UpstreamFailure {
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Other => "other",
        }
    }
}

/// How one pingora failure is answered, logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What the client sees; `None` when nobody is left to answer.
    pub answer: Option<EdgeError>,
    pub log: ProxyError,
    /// Set when the upstream side failed.
    pub upstream: Option<UpstreamFailure>,
}

/// The one classifier for errors pingora hands to `fail_to_proxy`.
pub fn classify(e: &pingora::Error) -> Failure {
    use pingora::{ErrorSource, ErrorType};
    let kind = match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Some(UpstreamFailure::Timeout)
        }
        ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError => {
            Some(UpstreamFailure::Connect)
        }
        _ => None,
    };
    let log = match (e.etype(), kind) {
        (ErrorType::HTTPStatus(_), _) => ProxyError::Limit,
        (_, Some(UpstreamFailure::Timeout)) => ProxyError::Timeout,
        (_, Some(UpstreamFailure::Connect)) => ProxyError::Connect,
        _ => ProxyError::Proxy,
    };
    Failure {
        answer: for_proxy_failure(e),
        log,
        upstream: matches!(e.esource(), ErrorSource::Upstream)
            .then(|| kind.unwrap_or(UpstreamFailure::Other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_decides_status_log_error_and_counter() {
        use ProxyError as E;
        use RefusalCount as C;
        let auth = AuthFailure::UnsupportedScheme;
        #[rustfmt::skip]
        let cases = [
            (RefusalKind::Blocked(BlockReason::Client), 403, Some(E::BlockedClient), Some(C::Blocked(BlockReason::Client))),
            (RefusalKind::Blocked(BlockReason::User), 403, Some(E::BlockedUser), Some(C::Blocked(BlockReason::User))),
            (RefusalKind::AmbiguousPath, 400, None, None),
            (RefusalKind::NoRoute, 404, None, None),
            (RefusalKind::BodyTooLarge, 413, None, None),
            (RefusalKind::TooManyInFlight, 429, Some(E::TooManyInFlight), Some(C::InFlight)),
            // Counted per policy from the verdict's outcomes, not here.
            (RefusalKind::RateLimited, 429, None, None),
            (RefusalKind::InvalidToken(auth), 401, None, Some(C::AuthFailure(auth))),
        ];
        for (kind, status, log_error, count) in cases {
            let r = kind.refused();
            assert_eq!(
                (r.answer.status, r.log_error, r.count),
                (status, log_error, count),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn bodies_are_valid_short_json() {
        let all = [
            BAD_REQUEST,
            UNAUTHORIZED,
            NOT_FOUND,
            REQUEST_TIMEOUT,
            PAYLOAD_TOO_LARGE,
            RATE_LIMITED,
            HEADERS_TOO_LARGE,
            BAD_GATEWAY,
            UNAVAILABLE,
            GATEWAY_TIMEOUT,
        ];
        for e in all {
            let v: serde_json::Value = serde_json::from_str(&e.body(None)).unwrap();
            assert_eq!(v["error"]["code"], e.code);
            assert!(e.body(None).len() < 160, "{}", e.code);
            assert_ne!(e.reason_phrase(), "Error", "{}", e.status);
        }
        let v: serde_json::Value =
            serde_json::from_str(&RATE_LIMITED.body(Some("per-\"ip"))).unwrap();
        assert_eq!(v["error"]["policy"], "per-\"ip");
    }

    #[test]
    fn proxy_failures_map_to_gateway_statuses() {
        use pingora::{Error, ErrorSource, ErrorType};
        let cases = [
            (ErrorType::ConnectRefused, ErrorSource::Upstream, Some(502)),
            (ErrorType::ConnectTimedout, ErrorSource::Upstream, Some(504)),
            (ErrorType::ReadTimedout, ErrorSource::Upstream, Some(504)),
            (
                ErrorType::ConnectionClosed,
                ErrorSource::Upstream,
                Some(502),
            ),
            (ErrorType::ReadTimedout, ErrorSource::Downstream, Some(408)),
            (ErrorType::ConnectionClosed, ErrorSource::Downstream, None),
            (ErrorType::HTTPStatus(413), ErrorSource::Internal, Some(413)),
            (ErrorType::ConnectRefused, ErrorSource::Internal, Some(502)),
        ];
        for (etype, source, want) in cases {
            let mut e = Error::new(etype.clone());
            e.esource = source.clone();
            assert_eq!(
                for_proxy_failure(&e).map(|x| x.status),
                want,
                "{etype:?} {source:?}"
            );
        }
    }

    #[test]
    fn failures_are_classified_for_logs_and_metrics() {
        use pingora::{Error, ErrorSource as S, ErrorType as T};
        use ProxyError as P;
        use UpstreamFailure as U;
        let cases = [
            (T::ConnectRefused, S::Upstream, P::Connect, Some(U::Connect)),
            (T::ConnectNoRoute, S::Upstream, P::Connect, Some(U::Connect)),
            (
                T::ConnectTimedout,
                S::Upstream,
                P::Timeout,
                Some(U::Timeout),
            ),
            (T::ReadTimedout, S::Upstream, P::Timeout, Some(U::Timeout)),
            (T::ConnectionClosed, S::Upstream, P::Proxy, Some(U::Other)),
            (T::ReadTimedout, S::Downstream, P::Timeout, None),
            (T::ConnectionClosed, S::Downstream, P::Proxy, None),
            (T::HTTPStatus(413), S::Internal, P::Limit, None),
            (T::ConnectNoRoute, S::Internal, P::Connect, None),
        ];
        for (etype, source, log, upstream) in cases {
            let mut e = Error::new(etype.clone());
            e.esource = source.clone();
            let got = classify(&e);
            assert_eq!(
                (got.log, got.upstream),
                (log, upstream),
                "{etype:?} {source:?}"
            );
            assert_eq!(got.answer, for_proxy_failure(&e), "{etype:?} {source:?}");
        }
        let labels = [
            P::BlockedClient,
            P::BlockedUser,
            P::Limit,
            P::Timeout,
            P::Connect,
            P::Proxy,
        ];
        let labels: Vec<&str> = labels.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            labels,
            [
                "blocked_client",
                "blocked_user",
                "limit",
                "timeout",
                "connect",
                "proxy"
            ]
        );
    }
}
