//! `gateway replay`: a limits config tried on recorded traffic. Every access-log line that
//! reached the rate-limit stage (it carries `limit_at_ns`) goes through the candidate's
//! policies with the live `Limiter::check` (same keying, same GCRA) on a virtual clock read
//! from the log. Lines are written when a request ends, not when the limiter decided, so a
//! bounded reorder buffer puts them back in decision order: memory is the buffer plus the
//! limiter's `max_keys` per policy, never the log's length.
//!
//! Shared policies are modelled as one limiter for the whole fleet (merge every replica's
//! log); `shared: exact`'s Redis answer is not replayed.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::BufRead;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::admit::limits::{Decision, Limiter, RateLimitsConfig, RequestFacts};

/// How far a line may be out of decision order: a request's whole life (the longest
/// timeouts are 30 s) with room to spare.
const REORDER_NS: u64 = 120_000_000_000;
/// Keys listed per policy.
const TOP: usize = 10;

/// The fields replay reads from an access-log line.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    path: Cow<'a, str>,
    client_ip: Option<IpAddr>,
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
    limit_at_ns: Option<u64>,
}

/// The gateway's own line layout read without a JSON parser: each key found by its quoted
/// name followed by `":`. Values are JSON-escaped, so a quote inside a value is always `\"`
/// and no value can fake a key. `None` (then serde_json parses the line) when a line is not
/// an access-log line in that layout, or a value needed is escaped.
fn fast_fields(line: &[u8]) -> Option<Line<'_>> {
    use memchr::memmem;
    if !line.ends_with(br#","target":"access_log"}"#) || !line.starts_with(b"{") {
        return None;
    }
    let at = |key: &[u8]| memmem::find(line, key).map(|i| i + key.len());
    let string = |key: &[u8]| -> Option<Option<&str>> {
        let Some(start) = at(key) else {
            return Some(None);
        };
        let len = memchr::memchr(b'"', &line[start..])?;
        let v = &line[start..start + len];
        if v.contains(&b'\\') {
            return None;
        }
        std::str::from_utf8(v).ok().map(Some)
    };
    let limit_at_ns = match at(br#""limit_at_ns":"#) {
        Some(start) => {
            let digits = line[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            Some(
                std::str::from_utf8(&line[start..start + digits])
                    .ok()?
                    .parse()
                    .ok()?,
            )
        }
        None => None,
    };
    Some(Line {
        target: Some(Cow::Borrowed("access_log")),
        method: Cow::Borrowed(string(br#""method":""#)?.unwrap_or("")),
        path: Cow::Borrowed(string(br#""path":""#)?.unwrap_or("")),
        client_ip: match string(br#""client_ip":""#)? {
            Some(ip) => Some(ip.parse().ok()?),
            None => None,
        },
        user_id: string(br#""user_id":""#)?.map(Cow::Borrowed),
        limit_at_ns,
    })
}

/// A line waiting in the reorder buffer.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    at: u64,
    seq: u64,
    method: String,
    path: String,
    client_ip: IpAddr,
    user: Option<String>,
}

/// Per-policy figures of one replay.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyReport {
    pub policy: String,
    pub matched: u64,
    /// Refused by this (enforcing) policy: the one a live 429 names.
    pub would_refuse: u64,
    /// Shadow policy said no.
    pub would_flag: u64,
    pub keys_refused: usize,
    pub top: Vec<(String, u64)>,
    /// Unix ns of the first and last refusal (or flag).
    pub first_refusal: Option<u64>,
    pub last_refusal: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub lines: u64,
    pub replayed: u64,
    /// Access-log lines that did not reach the limits, and other log lines.
    pub skipped: u64,
    /// Not JSON, or an access-log line without the fields a replay needs.
    pub garbled: u64,
    pub policies: Vec<PolicyReport>,
}

struct Counts {
    matched: u64,
    refused: u64,
    flagged: u64,
    first: Option<u64>,
    last: Option<u64>,
}

/// Replays one config over the lines.
pub struct Replay {
    limiter: Limiter,
    counts: Vec<Counts>,
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Lines in decision order as they came (the usual case: O(1) each)…
    ordered: VecDeque<Pending>,
    /// …and those that came after a later decision (a slower request's line).
    late: BinaryHeap<Reverse<Pending>>,
    /// The latest decision seen: lines more than `REORDER_NS` older are final.
    max_at: u64,
    seq: u64,
    /// The latest decision replayed: the clock the top-refusals view is read at.
    last_at: u64,
    report: Report,
}

impl Replay {
    pub fn new(cfg: &RateLimitsConfig) -> Replay {
        let mut limiter = Limiter::new(cfg);
        // Refusals over the whole log (no sliding window); as many keys as the store holds,
        // so `keys_refused` is exact up to `max_keys`.
        limiter.set_top(cfg.max_keys, Duration::from_secs(100 * 365 * 86_400), None);
        let names: Vec<String> = cfg.policies.iter().map(|p| p.name.clone()).collect();
        Replay {
            limiter,
            counts: names
                .iter()
                .map(|_| Counts {
                    matched: 0,
                    refused: 0,
                    flagged: 0,
                    first: None,
                    last: None,
                })
                .collect(),
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
            names,
            ordered: VecDeque::new(),
            late: BinaryHeap::new(),
            max_at: 0,
            seq: 0,
            last_at: 0,
            report: Report::default(),
        }
    }

    /// One log line (without its newline).
    pub fn line(&mut self, text: &[u8]) {
        self.report.lines += 1;
        let parsed = match fast_fields(text) {
            Some(l) => Ok(l),
            None => serde_json::from_slice::<Line>(text),
        };
        let Ok(l) = parsed else {
            self.report.garbled += 1;
            return;
        };
        if l.target.as_deref() != Some("access_log") {
            self.report.skipped += 1;
            return;
        }
        let Some(at) = l.limit_at_ns else {
            // Refused before the limits (block list, route, head, …): skipped live too.
            self.report.skipped += 1;
            return;
        };
        let (Some(client_ip), false) = (l.client_ip, l.method.is_empty() || l.path.is_empty())
        else {
            self.report.garbled += 1;
            return;
        };
        self.seq += 1;
        let p = Pending {
            at,
            seq: self.seq,
            method: l.method.into_owned(),
            path: l.path.into_owned(),
            client_ip,
            user: l.user_id.map(Cow::into_owned),
        };
        if at >= self.max_at {
            self.max_at = at;
            self.ordered.push_back(p);
        } else {
            self.late.push(Reverse(p));
        }
        while let Some(p) = self.next_final(false) {
            self.decide(&p);
        }
    }

    /// The earliest buffered line if it is final (or, with `all`, at all).
    fn next_final(&mut self, all: bool) -> Option<Pending> {
        let key = |p: &Pending| (p.at, p.seq);
        let from_late = match (self.ordered.front(), self.late.peek()) {
            (None, None) => return None,
            (Some(o), Some(Reverse(l))) => key(l) < key(o),
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        let at = if from_late {
            self.late.peek().map(|r| r.0.at)
        } else {
            self.ordered.front().map(|p| p.at)
        }?;
        if !all && at.saturating_add(REORDER_NS) > self.max_at {
            return None;
        }
        if from_late {
            self.late.pop().map(|r| r.0)
        } else {
            self.ordered.pop_front()
        }
    }

    fn decide(&mut self, p: &Pending) {
        self.report.replayed += 1;
        let facts = RequestFacts {
            method: &p.method,
            path: &p.path,
            client_ip: p.client_ip,
            user: p.user.as_deref(),
        };
        let verdict = self.limiter.check(&facts, p.at);
        self.last_at = self.last_at.max(p.at);
        for (i, o) in verdict.outcomes.iter().enumerate() {
            let Some(&k) = self.index.get(&*o.policy) else {
                continue;
            };
            let c = &mut self.counts[k];
            c.matched += 1;
            let said_no = if verdict.rejected_by == Some(i) {
                c.refused += 1;
                true
            } else if o.decision == Decision::ShadowRejected {
                c.flagged += 1;
                true
            } else {
                false
            };
            if said_no {
                c.first.get_or_insert(p.at);
                c.last = Some(p.at);
            }
        }
    }

    /// Drains the buffer and returns the figures.
    pub fn finish(mut self) -> Report {
        while let Some(p) = self.next_final(true) {
            self.decide(&p);
        }
        let prefix = self.limiter.ipv6_prefix();
        let mut report = self.report;
        for (name, c) in self.names.iter().zip(&self.counts) {
            let all = self
                .limiter
                .top(name, usize::MAX, self.last_at)
                .unwrap_or_default();
            report.policies.push(PolicyReport {
                policy: name.clone(),
                matched: c.matched,
                would_refuse: c.refused,
                would_flag: c.flagged,
                keys_refused: all.len(),
                top: all
                    .iter()
                    .take(TOP)
                    .map(|e| (e.key.render(prefix), e.refused))
                    .collect(),
                first_refusal: c.first,
                last_refusal: c.last,
            });
        }
        report
    }
}

/// Every line of every reader through one replay.
pub fn run(cfg: &RateLimitsConfig, readers: Vec<Box<dyn BufRead>>) -> std::io::Result<Report> {
    let mut r = Replay::new(cfg);
    let mut line = Vec::with_capacity(1024);
    for mut reader in readers {
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            r.line(&line);
        }
    }
    Ok(r.finish())
}

fn time(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |ns| {
        let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns);
        json!(humantime::format_rfc3339_millis(t).to_string())
    })
}

fn policies_json(r: &Report) -> Value {
    r.policies
        .iter()
        .map(|p| {
            json!({
                "policy": p.policy,
                "matched": p.matched,
                "would_refuse": p.would_refuse,
                "would_flag": p.would_flag,
                "keys_refused": p.keys_refused,
                "top": p.top.iter().map(|(k, n)| json!({"key": k, "refused": n})).collect::<Vec<_>>(),
                "first_refusal": time(p.first_refusal),
                "last_refusal": time(p.last_refusal),
            })
        })
        .collect()
}

/// `--json`: `lines`, `replayed`, `skipped`, `garbled`, `policies`, and `baseline` (the
/// same list for the other config) when given.
pub fn to_json(candidate: &Report, baseline: Option<&Report>) -> Value {
    let mut v = json!({
        "lines": candidate.lines,
        "replayed": candidate.replayed,
        "skipped": candidate.skipped,
        "garbled": candidate.garbled,
        "policies": policies_json(candidate),
        "note": "shared policies are modelled as one limiter for the whole fleet",
    });
    if let Some(b) = baseline {
        v["baseline"] = policies_json(b);
    }
    v
}

/// The readable report; with a baseline, both side by side and the difference.
pub fn to_text(candidate: &Report, baseline: Option<&Report>) -> String {
    let mut out = format!(
        "{} lines: {} replayed, {} skipped (did not reach the limits), {} garbled\n",
        candidate.lines, candidate.replayed, candidate.skipped, candidate.garbled
    );
    out.push_str("(shared policies are modelled as one limiter for the whole fleet)\n\n");
    let find = |r: &Report, name: &str| r.policies.iter().find(|p| p.policy == name).cloned();
    let mut names: Vec<String> = candidate
        .policies
        .iter()
        .map(|p| p.policy.clone())
        .collect();
    for p in baseline.into_iter().flat_map(|b| &b.policies) {
        if !names.contains(&p.policy) {
            names.push(p.policy.clone());
        }
    }
    for name in names {
        let (c, b) = (
            find(candidate, &name),
            baseline.and_then(|b| find(b, &name)),
        );
        out.push_str(&format!("policy {name}\n"));
        let row = |label: &str, f: &dyn Fn(&PolicyReport) -> String| {
            let cell = |p: &Option<PolicyReport>| p.as_ref().map_or("-".into(), f);
            if baseline.is_some() {
                format!("  {label:<16} {:>14} {:>14}\n", cell(&c), cell(&b))
            } else {
                format!("  {label:<16} {:>14}\n", cell(&c))
            }
        };
        if baseline.is_some() {
            out.push_str(&format!(
                "  {:<16} {:>14} {:>14}\n",
                "", "candidate", "baseline"
            ));
        }
        out.push_str(&row("matched", &|p| p.matched.to_string()));
        out.push_str(&row("would refuse", &|p| p.would_refuse.to_string()));
        out.push_str(&row("would flag", &|p| p.would_flag.to_string()));
        out.push_str(&row("keys refused", &|p| p.keys_refused.to_string()));
        if let (Some(c), Some(b)) = (&c, &b) {
            let d = (c.would_refuse + c.would_flag) as i64 - (b.would_refuse + b.would_flag) as i64;
            out.push_str(&format!("  {:<16} {d:>+14}\n", "difference"));
        }
        for (label, p) in [("candidate", &c), ("baseline", &b)] {
            let Some(p) = p else { continue };
            if baseline.is_none() && label == "baseline" {
                continue;
            }
            if !p.top.is_empty() {
                let first = time(p.first_refusal);
                let last = time(p.last_refusal);
                out.push_str(&format!(
                    "  {label} refusals {} .. {}; top keys:",
                    first.as_str().unwrap_or("-"),
                    last.as_str().unwrap_or("-")
                ));
                for (k, n) in &p.top {
                    out.push_str(&format!(" {k}={n}"));
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
policies:
  - {name: per-ip, key: ip, rate: 1/s, burst: 2}
  - {name: per-user, key: user, rate: 1/s, burst: 1, mode: shadow}
"#;

    fn line(at: u64, ip: &str, user: Option<&str>) -> String {
        let user = user.map_or(String::new(), |u| format!(r#","user_id":"{u}""#));
        format!(
            r#"{{"timestamp":"x","method":"GET","path":"/v1/x","client_ip":"{ip}"{user},"limit_at_ns":{at},"target":"access_log"}}"#
        )
    }

    fn replay(lines: &[String]) -> Report {
        let cfg: RateLimitsConfig = serde_yaml::from_str(CFG).unwrap();
        let mut r = Replay::new(&cfg);
        for l in lines {
            r.line(l.as_bytes());
        }
        r.finish()
    }

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    #[test]
    fn counts_skips_and_garbage_table() {
        let lines = vec![
            line(T0, "192.0.2.1", Some("u1")),
            line(T0, "192.0.2.1", Some("u1")),
            line(T0, "192.0.2.1", Some("u2")),
            line(T0 + 3 * SEC, "192.0.2.1", Some("u1")),
            // Refused before the limits: no limit_at_ns.
            r#"{"method":"GET","path":"/x","client_ip":"192.0.2.1","status":404,"target":"access_log"}"#.into(),
            r#"{"message":"config reloaded","target":"gateway"}"#.into(),
            "not json".into(),
            r#"{"limit_at_ns":5,"target":"access_log"}"#.into(),
        ];
        let r = replay(&lines);
        assert_eq!((r.lines, r.replayed, r.skipped, r.garbled), (8, 4, 2, 2));
        let ip = &r.policies[0];
        assert_eq!((ip.matched, ip.would_refuse, ip.keys_refused), (4, 1, 1));
        assert_eq!(ip.top, [("192.0.2.1".to_string(), 1)]);
        assert_eq!(ip.first_refusal, Some(T0));
        // Shadow: u1's second request at T0 is flagged (a refused request charges nothing).
        let user = &r.policies[1];
        assert_eq!(
            (user.matched, user.would_flag, user.would_refuse),
            (4, 1, 0)
        );
    }

    #[test]
    fn fast_path_agrees_with_serde_json() {
        let cases = [
            line(T0, "192.0.2.1", Some("u1")),
            line(T0, "2001:db8::1", None),
            r#"{"method":"GET","path":"/v1/\"odd\"","client_ip":"192.0.2.1","limit_at_ns":5,"target":"access_log"}"#.into(),
            r#"{"method":"GET","path":"/v1/x","client_ip":"192.0.2.1","user_agent":"a\"user_id\":\"x","limit_at_ns":5,"target":"access_log"}"#.into(),
            r#"{"method":"GET","path":"/v1/x","client_ip":"not-ip","limit_at_ns":5,"target":"access_log"}"#.into(),
            r#"{"method":"GET","path":"/v1/x","status":404,"target":"access_log"}"#.into(),
        ];
        for c in &cases {
            let slow = serde_json::from_str::<Line>(c).ok();
            let fast = fast_fields(c.as_bytes());
            let key = |l: &Line| {
                (
                    l.method.to_string(),
                    l.path.to_string(),
                    l.client_ip,
                    l.user_id.as_deref().map(String::from),
                    l.limit_at_ns,
                )
            };
            if let Some(f) = &fast {
                assert_eq!(Some(key(f)), slow.as_ref().map(key), "{c}");
            }
        }
        // Escaped values leave the line to serde_json.
        assert!(fast_fields(cases[2].as_bytes()).is_none());
        assert!(fast_fields(cases[4].as_bytes()).is_none());
    }

    #[test]
    fn lines_out_of_order_are_replayed_in_decision_order() {
        // Written in completion order; the limiter decided in `at` order.
        let ordered: Vec<String> = (0..5)
            .map(|i| line(T0 + i * 100, "192.0.2.9", None))
            .collect();
        let mut shuffled = ordered.clone();
        shuffled.swap(0, 3);
        shuffled.swap(1, 4);
        assert_eq!(replay(&ordered), replay(&shuffled));
        assert_eq!(replay(&ordered).policies[0].would_refuse, 3);
    }

    #[test]
    fn reports_render() {
        let r = replay(&[
            line(T0, "2001:db8::1", None),
            line(T0, "2001:db8::2", None),
            line(T0, "2001:db8::3", None),
        ]);
        let v = to_json(&r, Some(&r));
        assert_eq!(v["policies"][0]["top"][0]["key"], "2001:db8::/64");
        assert_eq!(v["baseline"][0]["would_refuse"], 1);
        let t = to_text(&r, Some(&r));
        assert!(t.contains("difference") && t.contains("+0"), "{t}");
    }
}
