//! `app`: CLI entry point — runs the document service (the `app` library) or hashes a password.

#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use app::config::Config;
use app::store::Store;
use app::users::{self, Users};
use app::{server, AppState};

#[derive(Parser)]
#[command(
    name = "app",
    version,
    about = "Minimal document service",
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Path to the YAML config file (required to run the server).
    #[arg(long, value_name = "PATH", required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Read a password from stdin (one line) and print its argon2id PHC hash.
    HashPassword,
    /// GET /healthz; exit 0 when it answers 200 (for container HEALTHCHECK).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8081/healthz")]
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::HashPassword), _) => hash_password(),
        (Some(Command::Healthcheck { url }), _) => healthcheck::command("app", &url),
        (None, Some(path)) => serve(path),
        (None, None) => unreachable!("clap requires --config without a subcommand"),
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("app: cannot read password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        eprintln!("app: empty password");
        return ExitCode::FAILURE;
    }
    println!("{}", users::hash_password(password));
    ExitCode::SUCCESS
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}

fn serve(config_path: PathBuf) -> ExitCode {
    // Startup problems go to stderr in plain words, before anything is served.
    let fail = |msg: String| {
        eprintln!("app: {msg}");
        ExitCode::FAILURE
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let users = match Users::load(&config.users_file) {
        Ok(u) => u,
        Err(e) => return fail(e.to_string()),
    };
    let keyring = match keyring::Keyring::load(&config.token_key_file) {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    init_logging();
    let (store, recovery) = match Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "cannot open data_dir {}: {e}",
                config.data_dir.display()
            ))
        }
    };
    tracing::info!(
        documents = recovery.documents,
        removed_temp = recovery.removed_temp,
        removed_orphans = recovery.removed_orphans,
        skipped = recovery.skipped,
        users = users.len(),
        "storage recovered"
    );

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start runtime: {e}")),
    };
    let state = Arc::new(AppState::new(
        users,
        keyring,
        store,
        Duration::from_secs(config.token_ttl_seconds),
        config.max_upload_bytes,
    ));
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        tracing::info!(listen = %listener.local_addr()?, "listening");
        server::run(state, listener, grace).await
    });
    // Don't wait for stray blocking tasks (e.g. a stuck disk) beyond the grace period.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot serve on {}: {e}", config.listen)),
    }
}
