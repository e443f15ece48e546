//! JSON logging to stdout through a non-blocking, lossy writer: a slow log
//! consumer drops lines (counted) instead of stalling requests.

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines buffered between request tasks and the writer thread before dropping.
const BUFFERED_LINES: usize = 64 * 1024;

/// The one JSON line format used for access and operational logs.
pub fn json_subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_env("GATEWAY_LOG")
        // pingora logs every failed upstream attempt at error level; keep it, it is rare.
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
}

pub struct LogHandle {
    pub dropped: ErrorCounter,
    _guard: WorkerGuard,
}

/// Installs the global subscriber (and the `log` bridge for pingora's own logs).
pub fn init() -> LogHandle {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("access-log")
        .finish(std::io::stdout());
    let dropped = writer.error_counter();
    let _ = tracing_log::LogTracer::init();
    let _ = tracing::subscriber::set_global_default(json_subscriber(writer));
    LogHandle {
        dropped,
        _guard: guard,
    }
}
