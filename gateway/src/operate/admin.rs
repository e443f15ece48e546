//! The admin listener: /metrics, /healthz, /readyz, and the cockpit's /limits (`cockpit`).
//! Bind it to loopback or an internal network only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::state::Process;

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response")
}

/// Refreshes gauges that are read from state rather than counted on the hot path.
fn refresh_gauges(shared: &Process, log_dropped: usize) {
    let m = &shared.metrics;
    let live = shared.live.load();
    for stats in live.limiter.policies() {
        m.rate_limit_active_keys
            .with_label_values(&[stats.name.as_ref()])
            .set(stats.active_keys as i64);
        m.rate_limit_evictions
            .with_label_values(&[stats.name.as_ref()])
            .set(stats.evictions as i64);
    }
    m.access_log_dropped.set(log_dropped as i64);
}

pub fn route(
    shared: &Process,
    req: &Request<Incoming>,
    log_dropped: usize,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"code":"method_not_allowed","message":"Use GET."}}"#,
        );
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" if shared.is_draining() => {
            json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
        }
        "/readyz" if shared.is_shutting_down() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"shutting_down"}"#,
        ),
        "/readyz" if !shared.upstream.is_reachable() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"upstream_unreachable"}"#,
        ),
        "/readyz" => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/metrics" => {
            refresh_gauges(shared, log_dropped);
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(shared.metrics.render())))
                .expect("metrics response")
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"No such route."}}"#,
        ),
    }
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Process>,
    log_dropped: Arc<dyn Fn() -> usize + Send + Sync>,
) {
    // Runs until the process exits, so /readyz keeps answering 503 while draining.
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let log_dropped = log_dropped.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (shared, log_dropped) = (shared.clone(), log_dropped.clone());
                async move {
                    let resp = if crate::operate::cockpit::handles(req.uri().path()) {
                        crate::operate::cockpit::handle(&shared, req).await
                    } else {
                        route(&shared, &req, log_dropped())
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
