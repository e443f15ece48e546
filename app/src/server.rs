//! Accept loop, per-request envelope (request id, metrics, access log), graceful shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::X_CONTENT_TYPE_OPTIONS;
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Body as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::body::{Body, RequestBody};
use crate::errors::ApiError;
use crate::handlers::{dispatch, AppState};
use crate::routes::{route, RouteError};
use edgekit::{is_valid_request_id, method_label, new_request_id};

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LOGGED_PATH: usize = 256;
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serves until SIGTERM/SIGINT, then drains in-flight requests for at most `grace`.
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    grace: Duration,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually fd exhaustion: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |req| handle(state.clone(), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                });
            }
            signal = &mut shutdown => {
                tracing::info!(signal, "shutdown requested; draining in-flight requests");
                break;
            }
        }
    }
    drop(listener); // stop accepting right away
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(grace_seconds = grace.as_secs(), "grace period over; dropping remaining connections"),
    }
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// The whole service for one request: a `Request` in, a `Response` out, no socket, so
/// routes can be tested in-process.
pub async fn handle<B: RequestBody>(
    state: Arc<AppState>,
    req: Request<B>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| is_valid_request_id(v.as_bytes()))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let method = req.method().clone();
    // Path only: query strings may carry document names.
    let path: String = req.uri().path().chars().take(MAX_LOGGED_PATH).collect();
    let (template, routed) = route(&method, req.uri().path());
    let mut user_id: Option<String> = None;

    let span = tracing::info_span!("request", request_id = %request_id);
    let result = match routed {
        Ok(r) => {
            dispatch(&state, r, req, &mut user_id)
                .instrument(span)
                .await
        }
        Err(RouteError::NotFound) => Err(ApiError::not_found()),
        Err(RouteError::MethodNotAllowed(allow)) => Err(ApiError::method_not_allowed(allow)),
    };
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers
        .entry(X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));

    // Measured to the response head; streamed bodies finish later.
    let elapsed = start.elapsed();
    let status = resp.status();
    state.metrics.observe(&method, template, status, elapsed);
    tracing::info!(
        request_id = %request_id,
        method = method_label(&method),
        path = %path,
        route = template,
        status = status.as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        bytes_out = resp.body().size_hint().exact(),
        user_id = user_id.as_deref(),
        "request"
    );
    Ok(resp)
}
