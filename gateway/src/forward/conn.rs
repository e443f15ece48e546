//! Per-connection settings, decided in one place: whether a connection is kept after a
//! response (keep-alive, drain, an unread body), and the timeouts a client session and an
//! upstream peer run under; and the L4 balancer (PROXY protocol) the connection came through.

use std::future::Future;
use std::net::IpAddr;

use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession;

use crate::config::Timeouts;

/// `Some(idle seconds)` to keep the client connection after this response, `None` to close
/// it: a draining gateway closes, and so does an answer that leaves a request body unread
/// (the body would be parsed as the next request). Pingora keeps a connection only when
/// keepalive is set; the listener enforces the idle time itself.
pub fn keepalive(t: &Timeouts, draining: bool, unread_body: bool) -> Option<u64> {
    (!draining && !unread_body).then(|| t.keepalive_idle.as_secs().max(1))
}

/// The client session's read and write timeouts.
pub fn client_timeouts(session: &mut ServerSession, t: &Timeouts) {
    session.set_read_timeout(Some(t.downstream_read));
    session.set_write_timeout(Some(t.downstream_write));
}

/// The upstream connection's timeouts (the connect timeout bounds the whole connect).
pub fn upstream_timeouts(peer: &mut HttpPeer, t: &Timeouts) {
    peer.options.connection_timeout = Some(t.upstream_connect);
    peer.options.total_connection_timeout = Some(t.upstream_connect);
    peer.options.read_timeout = Some(t.upstream_read);
    peer.options.write_timeout = Some(t.upstream_write);
    peer.options.idle_timeout = Some(t.upstream_idle);
}

tokio::task_local! {
    /// The balancer of a PROXY protocol connection, for its requests' access log lines.
    static BALANCER: IpAddr;
}

/// The balancer the current connection came through (`None` without PROXY protocol).
pub fn balancer() -> Option<IpAddr> {
    BALANCER.try_with(|b| *b).ok()
}

/// Runs `f` (a connection's or an h2 stream's task) with `balancer()` answering `balancer`.
pub async fn with_balancer<F: Future>(balancer: Option<IpAddr>, f: F) -> F::Output {
    match balancer {
        Some(b) => BALANCER.scope(b, f).await,
        None => f.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn kept_only_when_not_draining_and_nothing_is_left_unread() {
        let mut t = Timeouts {
            keepalive_idle: Duration::from_secs(60),
            ..Timeouts::default()
        };
        #[rustfmt::skip]
        let cases = [
            // draining, unread body, kept for
            (false, false, Some(60)),
            (true,  false, None),
            (false, true,  None),
            (true,  true,  None),
        ];
        for (draining, unread, want) in cases {
            assert_eq!(keepalive(&t, draining, unread), want, "{draining} {unread}");
        }
        t.keepalive_idle = Duration::from_millis(200);
        assert_eq!(
            keepalive(&t, false, false),
            Some(1),
            "pingora counts whole seconds"
        );
    }
}
