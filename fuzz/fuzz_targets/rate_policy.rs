//! Rate / policy / config parsing: `Rate::from_str`, `Config::parse` (which runs
//! every rate-limit validation), and the limiter built from whatever parses.
//! Never panics; a parsed rate prints back to itself; a valid config yields a
//! limiter whose decisions and headers stay well-formed.
//!
//! Byte 0 picks the mode, the rest is text:
//! 0 = a rate string alone and inside a policy, 1 = a whole gateway config,
//! 2 = the body of `rate_limits:` under a fixed valid header.
#![no_main]

use std::net::IpAddr;
use std::str::FromStr;

use gateway::admit::limits::rate::{Rate, MAX_COUNT};
use gateway::admit::limits::{Decision, Limiter, Mode, RequestFacts};
use gateway::config::Config;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

const HEAD: &str = "upstream: 127.0.0.1:1\ntoken_key_file: keys.yaml\n";

fn exercise(config_text: &str) {
    let Ok(cfg) = Config::parse("fuzz.yaml", config_text) else {
        // Errors must render (file:line: field: message) without panicking.
        if let Err(e) = Config::parse("fuzz.yaml", config_text) {
            assert!(!e.to_string().is_empty());
        }
        return;
    };
    let limiter = Limiter::new(&cfg.rate_limits);
    let reloaded = limiter.reconfigure(&cfg.rate_limits);
    let ips: [IpAddr; 3] = [
        "203.0.113.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    ];
    let paths = ["/v1/documents", "/v1/auth/token", "/v1/x/y", "/"];
    let methods = ["GET", "POST", "DELETE"];
    let mut now: u64 = 1_000_000_000;
    for l in [&limiter, &reloaded] {
        for i in 0..24usize {
            let facts = RequestFacts {
                method: methods[i % methods.len()],
                path: paths[i % paths.len()],
                client_ip: ips[i % ips.len()],
                user: (i % 2 == 0).then_some("u-1"),
            };
            let v = l.check(&facts, now);
            now += 7_000_000 * (i as u64 % 5);
            for o in &v.outcomes {
                assert!(o.remaining <= o.limit, "{o:?}");
                assert!(HeaderValue::from_str(&o.policy_header()).is_ok());
                assert!(HeaderValue::from_str(&o.ratelimit_header()).is_ok());
                if o.decision == Decision::Rejected {
                    assert_eq!(o.mode, Mode::Enforce);
                }
            }
            if let Some(r) = v.rejection() {
                assert_eq!(r.decision, Decision::Rejected);
            }
            if let Some(r) = v.reported() {
                // Shadow policies are never shown to clients.
                assert_eq!(r.mode, Mode::Enforce);
            }
        }
        let _ = l.policies().count();
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 => {
            if let Ok(rate) = Rate::from_str(&text) {
                assert!((1..=MAX_COUNT).contains(&rate.count), "{rate:?}");
                // What we print (logs, errors) parses back to the same rate.
                let printed = rate.to_string();
                assert_eq!(Rate::from_str(&printed).as_ref(), Ok(&rate), "{printed}");
            }
            // A JSON string is a YAML double-quoted scalar: the text arrives verbatim.
            let quoted = serde_json::to_string(text.as_ref()).unwrap();
            exercise(&format!(
                "{HEAD}rate_limits:\n  policies:\n    - name: p\n      key: ip\n      rate: {quoted}\n      burst: 3\n"
            ));
        }
        1 => exercise(&text),
        _ => exercise(&format!("{HEAD}rate_limits:\n{text}")),
    }
});
