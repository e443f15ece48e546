//! Test support shared by `app` and `gateway` integration tests: one copy of the process
//! guard, port and readiness helpers, users/keys fixtures, raw HTTP client and stub upstream.

#![forbid(unsafe_code)]

pub mod fixtures;
pub mod http;
pub mod process;
pub mod stub;

pub use fixtures::{mint_token, mint_token_with_header, users_yaml, TEST_KEYS};
pub use http::{
    get_blocking, owned_headers, parse_response, raw_request, read_until_close, Response,
};
pub use process::{files_in, free_port, wait_until, ChildGuard};
/// Fails with every collected failure at once, so one run shows all broken cases.
pub fn assert_all_passed(failures: &[String], cases: usize) {
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

pub use stub::{header_values, record_headers, Stub, StubMode};
