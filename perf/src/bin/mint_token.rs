//! Prints a bearer token signed with the given key file, for benchmarks that need a
//! valid identity without going through the app's (deliberately slow) login.
//!
//! `mint-token KEY_FILE [SUB] [TTL_SECS]`

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(key_file) = args.first() else {
        eprintln!("usage: mint-token KEY_FILE [SUB] [TTL_SECS]");
        return ExitCode::FAILURE;
    };
    let sub = args.get(1).map_or("u-bench", String::as_str);
    let ttl = match args.get(2).map(|s| s.parse::<u64>()) {
        None => 3600,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("TTL_SECS: {e}");
            return ExitCode::FAILURE;
        }
    };
    match keyring::Keyring::load(Path::new(key_file)) {
        Ok(keys) => {
            println!(
                "{}",
                keys.sign(sub, Duration::from_secs(ttl), SystemTime::now())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
