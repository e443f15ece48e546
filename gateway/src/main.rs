//! `gateway`: run the edge proxy, check a config file, or probe health.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gateway::accept;
use gateway::admit::limits::shared::metrics::SharedMetrics;
use gateway::config::Config;
use gateway::forward::{proxy, upstream};
use gateway::observe::logging;
use gateway::operate::certs::{self, decide};
use gateway::operate::{admin, reload};
use gateway::state::{Live, Process};
use pingora::server::configuration::ServerConf;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};

// glibc malloc/free took ~18 % of the instructions per proxied request; mimalloc's
// thread-local free lists cut that to a few percent (perf/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Edge gateway in front of the document app")]
struct Cli {
    /// Config file to run with.
    #[arg(long, default_value = "config/gateway.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file (and the key file it names); exit 1 with file:line: field on error.
    CheckConfig {
        file: PathBuf,
        /// Check the file itself only, not the files it names: for checking the stack's
        /// config/gateway.yaml on a host where /run/secrets/token_keys does not exist.
        #[arg(long)]
        skip_files: bool,
    },
    /// GET the admin /healthz; exit 0 when it answers 200 (for container HEALTHCHECK).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
    },
    /// Print the config's JSON Schema (shipped as config/gateway.schema.json).
    Schema,
    /// Start a running gateway's shutdown (SIGTERM to `--pid`). A native sidecar gets its own
    /// SIGTERM only after the app has exited; this preStop hook runs when the pod starts
    /// terminating, so the gateway drains while the app still answers.
    Drain {
        /// The gateway's process id: 1 when it is its container's entrypoint.
        #[arg(long, default_value_t = 1)]
        pid: i32,
    },
    /// Try a limits config on recorded access logs (plain, .gz, or - for stdin).
    Replay {
        /// The candidate config (its rate_limits are replayed).
        #[arg(long = "config")]
        candidate: PathBuf,
        /// The config to compare with (usually the running one).
        #[arg(long)]
        baseline: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        logs: Vec<PathBuf>,
    },
    /// Rate limits on running replicas' admin ports: who is refused, one key, a reset, config drift.
    Limits {
        #[command(subcommand)]
        action: LimitsCommand,
        /// Admin addresses of the replicas, comma-separated.
        #[arg(
            long,
            global = true,
            value_delimiter = ',',
            default_value = "127.0.0.1:9901"
        )]
        admin: Vec<String>,
        /// File with the admin bearer token (default: /run/secrets/admin_token if present).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// Keys each policy refused most, summed over the replicas.
    Top {
        #[arg(long)]
        policy: Option<String>,
        #[arg(short, default_value_t = 20)]
        n: usize,
    },
    /// One key's bucket on every replica.
    Key {
        #[arg(long)]
        policy: String,
        #[arg(long)]
        key: String,
    },
    /// Give one key its full burst back (every replica; one for a shared policy).
    Reset {
        #[arg(long)]
        policy: String,
        #[arg(long)]
        key: String,
    },
    /// Each replica's config hash and last reload; exits 1 when they differ.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file, skip_files }) => check_config(&file, skip_files),
        Some(Command::Schema) => {
            print!("{}", gateway::config::schema::generate_json());
            ExitCode::SUCCESS
        }
        Some(Command::Healthcheck { url }) => healthcheck::command("gateway", &url),
        Some(Command::Drain { pid }) => drain(pid),
        Some(Command::Replay {
            candidate,
            baseline,
            json,
            logs,
        }) => replay(&candidate, baseline.as_deref(), json, &logs),
        Some(Command::Limits {
            action,
            admin,
            token_file,
            json,
        }) => limits(action, &admin, token_file.as_deref(), json),
        None => run(&cli.config),
    }
}

fn limits(
    action: LimitsCommand,
    admin: &[String],
    token_file: Option<&Path>,
    json: bool,
) -> ExitCode {
    use gateway::operate::cockpit::cli::{self, Action};
    let action = match action {
        LimitsCommand::Top { policy, n } => Action::Top { policy, n },
        LimitsCommand::Key { policy, key } => Action::Key { policy, key },
        LimitsCommand::Reset { policy, key } => Action::Reset { policy, key },
        LimitsCommand::Config => Action::Config,
    };
    let token = match cli::read_token(token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gateway limits: {e}");
            return ExitCode::FAILURE;
        }
    };
    cli::run(admin, token.as_deref(), json, &action)
}

fn replay(candidate: &Path, baseline: Option<&Path>, json: bool, logs: &[PathBuf]) -> ExitCode {
    use gateway::operate::replay;
    use std::io::BufRead;
    let open = |p: &Path| -> std::io::Result<Box<dyn BufRead>> {
        if p == Path::new("-") {
            return Ok(Box::new(std::io::BufReader::new(std::io::stdin())));
        }
        let f = std::fs::File::open(p)?;
        Ok(if p.extension().is_some_and(|e| e == "gz") {
            Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
                f,
            )))
        } else {
            Box::new(std::io::BufReader::with_capacity(1 << 20, f))
        })
    };
    let one = |config: &Path| -> Result<replay::Report, String> {
        let cfg = Config::load(config).map_err(|e| e.to_string())?;
        let readers = logs
            .iter()
            .map(|p| open(p).map_err(|e| format!("{}: {e}", p.display())))
            .collect::<Result<Vec<_>, _>>()?;
        replay::run(&cfg.rate_limits, readers).map_err(|e| format!("reading the logs: {e}"))
    };
    let result = one(candidate).and_then(|c| Ok((c, baseline.map(one).transpose()?)));
    match result {
        Ok((c, b)) => {
            if json {
                println!("{}", replay::to_json(&c, b.as_ref()));
            } else {
                print!("{}", replay::to_text(&c, b.as_ref()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path, skip_files: bool) -> ExitCode {
    let mut pair = None;
    let checked = Config::load(file).and_then(|c| {
        if skip_files {
            return Ok(None);
        }
        c.check_referenced_files(file)?;
        pair = certs::check(&c, file)?;
        Ok(Some(c))
    });
    match checked
        .map_err(|e| e.to_string())
        .and_then(|c| c.map_or(Ok(()), |c| Live::build(c, None).map(drop)))
    {
        Ok(()) if skip_files => {
            println!("{}: ok (referenced files not checked)", file.display());
            ExitCode::SUCCESS
        }
        Ok(()) => {
            match pair {
                Some(p) => println!("{}: ok ({})", file.display(), describe_pair(file, &p)),
                None => println!("{}: ok", file.display()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn drain(pid: i32) -> ExitCode {
    use nix::sys::signal::{kill, Signal};
    match kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway drain: cannot signal pid {pid}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// "certificate valid until …" for the ok line; a warning on stderr inside the 14-day window.
fn describe_pair(file: &Path, p: &gateway::accept::tls::cert::LoadedCert) -> String {
    let now = p
        .checked_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let until = humantime::format_rfc3339_seconds(p.not_after);
    let days = (p.not_after_unix() as i64 - now) / 86_400;
    if let Some(left) = decide::expires_soon(p.not_after_unix() as i64, now) {
        eprintln!(
            "{}: warning: field `tls.cert_file`: certificate expires in {} (not_after {until}); renew it (RUNBOOK.md \"Renew the certificate\")",
            file.display(),
            humantime::format_duration(left)
        );
    }
    format!(
        "certificate chain of {} valid until {until}, {days} days left",
        p.chain_len
    )
}

fn run(config_path: &Path) -> ExitCode {
    let log = logging::init();
    let config = match Config::load(config_path)
        .and_then(|c| c.check_referenced_files(config_path).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid config");
            return ExitCode::FAILURE;
        }
    };
    let threads = config
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // One worker: a current-thread runtime runs every task on this thread, with no
    // work-stealing scheduler and no cross-thread wake-ups (measured in perf/RESULTS.md).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.thread_name("gateway").enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config_path, config, log));
    // Don't wait for stragglers: the drain already had its grace period.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn serve(config_path: &Path, config: Config, log: logging::LogHandle) -> ExitCode {
    let live = match Live::build(config, None) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "invalid config");
            return ExitCode::FAILURE;
        }
    };
    let c = live.config.clone();
    let mut shared = Process::new(live, config_path.to_path_buf());
    if let Some(t) = &c.tls {
        // The same check as `check-config`: errors say file:line and the field.
        let loaded = certs::check(&c, config_path).map_err(|e| e.to_string());
        let loaded = loaded.map(|l| l.expect("tls is set"));
        match loaded.and_then(|l| gateway::accept::tls::TlsState::new(&l).map(|s| (s, l))) {
            Ok((state, l)) => {
                tracing::info!(cert = %t.cert_file.display(), not_after = l.not_after_unix(), "tls on");
                shared = shared.with_tls(state);
                // From the start, not only after a reload: the expiry alerts read it.
                shared
                    .metrics
                    .export_tls_certificate_expiry(Some(l.not_after_unix() as i64));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load the tls certificate pair");
                return ExitCode::FAILURE;
            }
        }
    }
    let shared = Arc::new(shared);

    let public = match tokio::net::TcpListener::bind(c.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %c.listen, error = %e, "cannot bind public listener");
            return ExitCode::FAILURE;
        }
    };
    let admin_listener = match tokio::net::TcpListener::bind(c.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %c.admin_listen, error = %e, "cannot bind admin listener");
            return ExitCode::FAILURE;
        }
    };

    let server_conf = ServerConf {
        upstream_keepalive_pool_size: c.upstream_pool_size,
        // pingora counts tries, not retries. Two tries let an idempotent request survive a
        // pooled connection the app closed; pingora's default hook never retries POST/DELETE.
        max_retries: 2,
        ..ServerConf::default()
    };
    let proxy = Arc::new(pingora::proxy::http_proxy(
        &Arc::new(server_conf),
        proxy::Gateway {
            shared: shared.clone(),
        },
    ));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(upstream::refresh_loop(
        c.upstream.clone(),
        shared.upstream.clone(),
        c.timeouts.upstream_refresh,
        c.timeouts.upstream_connect,
        shared.metrics.upstream_up.clone(),
        shutdown_rx.clone(),
    ));
    let admin_addr = admin_listener.local_addr().ok();
    let dropped = log.dropped.clone();
    tokio::spawn(admin::serve(
        admin_listener,
        shared.clone(),
        Arc::new(move || dropped.dropped_lines()),
    ));
    tokio::spawn(reload::watch(shared.clone()));
    let (source, export) = (shared.clone(), shared.clone());
    tokio::spawn(gateway::admit::limits::shared::sync::run(
        move || {
            let live = source.live.load();
            let engine = live.shared_limits.clone()?;
            Some(gateway::admit::limits::shared::sync::Snapshot {
                engine,
                policies: live.limiter.shared_policies(),
            })
        },
        // `gateway_shared_limits_*` are exported only while `shared_limits` is configured.
        move |on| SharedMetrics::get().export(export.metrics.registry(), on),
    ));
    let public_addr = public
        .local_addr()
        .map_or_else(|_| c.listen.to_string(), |a| a.to_string());
    let permits = Arc::new(Semaphore::new(c.limits.max_connections));
    tokio::spawn(accept::serve(
        public,
        proxy,
        shared.clone(),
        permits.clone(),
        shutdown_rx,
    ));
    // The bound addresses: with port 0 (tests starting several replicas from one file) the
    // configured ones say nothing.
    let admin_addr = admin_addr.map_or_else(|| c.admin_listen.to_string(), |a| a.to_string());
    tracing::info!(listen = %public_addr, admin = %admin_addr, upstream = %c.upstream, "gateway started");

    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // /readyz turns 503 at once, but traffic is served for `shutdown_delay`: endpoint lists
    // and load balancers take that long to stop sending it here. A second signal ends the
    // wait (the app behind is going away, or the operator insists).
    let timeouts = shared.live.load().config.timeouts.clone();
    shared.start_shutting_down();
    tracing::info!(
        delay_ms = timeouts.shutdown_delay.as_millis() as u64,
        "shutting down: not ready; serving until the delay ends"
    );
    tokio::select! {
        _ = tokio::time::sleep(timeouts.shutdown_delay) => {}
        _ = term.recv() => tracing::info!("second signal: delay cut short"),
        _ = int.recv() => tracing::info!("second signal: delay cut short"),
    }
    // Drain: the listener closes, idle keep-alive connections close, in-flight requests
    // finish with `Connection: close` (HTTP/2: GOAWAY); exit when they have or when the
    // grace period ends.
    let grace = timeouts.shutdown_grace;
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
    shared.start_draining();
    let _ = shutdown_tx.send(true);
    let total = c.limits.max_connections as u32;
    match tokio::time::timeout(grace, permits.acquire_many(total)).await {
        Ok(_) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(
            open_connections = shared.metrics.connections.get(),
            "grace period over; exiting with connections still open"
        ),
    }
    ExitCode::SUCCESS
}
