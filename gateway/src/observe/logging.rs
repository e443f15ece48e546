//! JSON logging to stdout through a non-blocking, lossy writer: a slow log
//! consumer drops lines (counted) instead of stalling requests.
//!
//! Lines are appended to a shared batch that a writer thread writes out with one
//! write. A line that finds the batch empty wakes the thread, which waits `LINGER` for
//! more lines to join before writing. Handing each line to the thread separately woke it
//! once per request, which on a one-core gateway cost more than formatting the line
//! (perf/RESULTS.md); this way a busy gateway wakes it at most about once per `LINGER`
//! and a quiet one still writes each line within about `LINGER`.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Bytes waiting for the writer thread before new lines are dropped.
const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;
/// How long the writer waits after a wake-up for more lines to share the write.
const LINGER: Duration = Duration::from_micros(500);
/// Write at once, without lingering, once this much is waiting.
const FLUSH_BYTES: usize = 256 * 1024;
/// The writer re-checks this often even without a wake-up (a safety net only).
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// `GATEWAY_LOG`, else `info`.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_env("GATEWAY_LOG")
        // pingora logs every failed upstream attempt at error level; keep it, it is rare.
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The `log` facade's max level for a filter's most verbose level: pingora's ~20
/// `debug!`/`trace!` calls per request then stop at one comparison instead of going
/// through `LogTracer` to the filter. Unknown: let everything through.
fn log_max_level(hint: Option<tracing::level_filters::LevelFilter>) -> log::LevelFilter {
    use tracing_log::AsLog;
    hint.map_or(log::LevelFilter::Trace, |h| h.as_log())
}

/// The one JSON line format used for access and operational logs.
pub fn json_subscriber<W>(writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = env_filter();
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

struct Batch {
    buf: Vec<u8>,
    closed: bool,
    /// The writer is waiting for a wake-up (guarded by the same lock as `buf`, so a line
    /// never misses the writer going to sleep).
    writer_idle: bool,
}

struct Pipe {
    batch: Mutex<Batch>,
    wake: Condvar,
    dropped: AtomicUsize,
}

impl Pipe {
    /// A poisoned lock only means a panic mid-append; the bytes are still a valid buffer.
    fn lock(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Lines dropped because the writer fell behind (for `gateway_access_log_dropped`).
#[derive(Clone)]
pub struct DroppedLines(Arc<Pipe>);

impl DroppedLines {
    pub fn dropped_lines(&self) -> usize {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// `MakeWriter` for the subscriber: the formatter writes each line with one `write_all`.
#[derive(Clone)]
pub struct BatchWriter(Arc<Pipe>);

impl Write for &BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let pipe = &self.0;
        let mut batch = pipe.lock();
        if batch.buf.len() + line.len() > MAX_BUFFERED_BYTES {
            drop(batch);
            pipe.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        batch.buf.extend_from_slice(line);
        // The writer only sleeps with an empty batch: this is the line that found it so.
        let wake = batch.writer_idle;
        if wake {
            batch.writer_idle = false;
        }
        drop(batch);
        if wake {
            pipe.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a BatchWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Moves batches to `out` until closed; writes what is left, then returns.
fn write_batches(pipe: &Pipe, mut out: impl Write) {
    let mut spare = Vec::with_capacity(FLUSH_BYTES);
    loop {
        let linger = {
            let mut batch = pipe.lock();
            while batch.buf.is_empty() && !batch.closed {
                batch.writer_idle = true;
                batch = pipe
                    .wake
                    .wait_timeout(batch, IDLE_CHECK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            batch.writer_idle = false;
            !batch.closed && batch.buf.len() < FLUSH_BYTES
        };
        if linger {
            std::thread::sleep(LINGER);
        }
        let closed = {
            let mut batch = pipe.lock();
            std::mem::swap(&mut batch.buf, &mut spare);
            batch.closed
        };
        if !spare.is_empty() {
            // A failing stdout loses these lines; there is nowhere better to report it.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
        }
        if closed && pipe.lock().buf.is_empty() {
            return;
        }
    }
}

pub struct LogHandle {
    pub dropped: DroppedLines,
    pipe: Arc<Pipe>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogHandle {
    /// Writes out what is buffered before the process exits.
    fn drop(&mut self) {
        self.pipe.lock().closed = true;
        self.pipe.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The batching writer and its thread, writing to `out`.
pub fn batch_writer(out: impl Write + Send + 'static) -> (BatchWriter, LogHandle) {
    let pipe = Arc::new(Pipe {
        batch: Mutex::new(Batch {
            buf: Vec::with_capacity(FLUSH_BYTES),
            closed: false,
            writer_idle: false,
        }),
        wake: Condvar::new(),
        dropped: AtomicUsize::new(0),
    });
    let worker = pipe.clone();
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_batches(&worker, out))
        .expect("spawn the log writer thread");
    let handle = LogHandle {
        dropped: DroppedLines(pipe.clone()),
        pipe: pipe.clone(),
        thread: Some(thread),
    };
    (BatchWriter(pipe), handle)
}

/// The writer `init` installed, for lines serialised outside tracing (the access log).
static LINES: OnceLock<BatchWriter> = OnceLock::new();

/// Writes one whole line (with its newline) to the log: through the batching writer once
/// `init` ran, straight to stdout before that.
pub fn write_line(line: &[u8]) {
    let _ = match LINES.get() {
        Some(writer) => (&*writer).write_all(line),
        None => std::io::stdout().write_all(line),
    };
}

/// Installs the global subscriber (and the `log` bridge for pingora's own logs).
pub fn init() -> LogHandle {
    let (writer, handle) = batch_writer(std::io::stdout());
    let _ = LINES.set(writer.clone());
    let max = log_max_level(env_filter().max_level_hint());
    let _ = tracing_log::LogTracer::builder().with_max_level(max).init();
    let _ = tracing::subscriber::set_global_default(json_subscriber(writer));
    handle
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A writer that keeps what is written, for tests of anything that logs.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_max_level_follows_the_filter() {
        let cases = [
            ("info", log::LevelFilter::Info),
            ("warn", log::LevelFilter::Warn),
            ("off", log::LevelFilter::Off),
            ("info,pingora_core=debug", log::LevelFilter::Debug),
            ("error,access_log=info", log::LevelFilter::Info),
            ("trace", log::LevelFilter::Trace),
        ];
        for (directives, want) in cases {
            let hint = EnvFilter::new(directives).max_level_hint();
            assert_eq!(log_max_level(hint), want, "{directives}");
        }
        assert_eq!(log_max_level(None), log::LevelFilter::Trace);
    }

    #[test]
    fn lines_arrive_whole_in_order_and_are_flushed_on_drop() {
        let sink = Sink::default();
        let (writer, handle) = batch_writer(sink.clone());
        for i in 0..10_000 {
            (&writer)
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(handle);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000);
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
    }

    #[test]
    fn lines_are_written_without_waiting_for_a_full_batch() {
        let sink = Sink::default();
        let (writer, handle) = batch_writer(sink.clone());
        (&writer).write_all(b"one line\n").unwrap();
        let start = std::time::Instant::now();
        while sink.0.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(2), "never flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(handle.dropped.dropped_lines(), 0);
    }
}
