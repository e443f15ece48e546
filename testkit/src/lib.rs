//! Test support shared by `app` and `gateway` integration tests: one copy of the process
//! guard, port and readiness helpers, users/keys fixtures, raw HTTP client and stub upstream.

#![forbid(unsafe_code)]

pub mod fixtures;
pub mod http;
pub mod process;
pub mod stub;

pub use fixtures::{mint_token, users_yaml, TEST_KEYS};
pub use http::{get_blocking, parse_response, raw_request, read_until_close, Response};
pub use process::{free_port, wait_until, ChildGuard};
pub use stub::{header_values, Stub, StubMode};
