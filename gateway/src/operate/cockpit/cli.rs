//! `gateway limits top|key|reset|config`: the cockpit's endpoints across replicas, from a
//! terminal (in the stack: `docker compose exec gateway gateway limits …`, the containers
//! have no curl). Blocking std I/O with explicit timeouts; the merging and the tables are
//! pure functions.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

/// Connect, write and read budget per replica.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read from a replica (a top of 10000 keys × every policy fits).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// Where compose mounts the token (used when `--token-file` is not given and it exists).
pub const DEFAULT_TOKEN_FILE: &str = "/run/secrets/admin_token";

pub enum Action {
    Top { policy: Option<String>, n: usize },
    Key { policy: String, key: String },
    Reset { policy: String, key: String },
    Config,
}

/// One replica's answer: its admin address and the JSON it sent, or a one-line error.
type Answer = (String, Result<Value, String>);

/// One request to an admin port; `Err` is a one-line reason.
fn call(
    admin: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Value, String> {
    let addr = admin
        .to_socket_addrs()
        .map_err(|e| format!("bad address: {e}"))?
        .next()
        .ok_or("bad address")?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("down ({e})"))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write failed ({e})"))?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(|e| format!("no answer ({e})"))?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = resp.parse(&raw) else {
        return Err("not an HTTP answer".into());
    };
    let status = resp.code.unwrap_or(0);
    let value: Value = serde_json::from_slice(&raw[head..]).unwrap_or(Value::Null);
    if status == 200 {
        return Ok(value);
    }
    let message = value["error"]["message"].as_str().unwrap_or("");
    Err(match status {
        401 => format!("401 unauthorized: wrong or missing token (--token-file) {message}"),
        403 => format!("403 forbidden: {message}"),
        _ => format!("{status} {message}"),
    })
}

fn on_all(admins: &[String], f: impl Fn(&str) -> Result<Value, String>) -> Vec<Answer> {
    admins.iter().map(|a| (a.clone(), f(a))).collect()
}

/// `policy=…&key=…` with the values percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Reads the token: `--token-file`, else the compose secret if present.
pub fn read_token(file: Option<&Path>) -> Result<Option<String>, String> {
    let path = match file {
        Some(p) => p,
        None if Path::new(DEFAULT_TOKEN_FILE).exists() => Path::new(DEFAULT_TOKEN_FILE),
        None => return Ok(None),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// Runs `action` against every admin address; prints a table (or `--json`) to stdout and
/// one line per failure to stderr. Exits 1 on any failure and, for `config`, on drift.
pub fn run(admins: &[String], token: Option<&str>, json: bool, action: &Action) -> ExitCode {
    let (out, errors, ok) = match action {
        Action::Top { policy, n } => {
            let n = n.to_string();
            let mut pairs = vec![("n", n.as_str())];
            if let Some(p) = policy {
                pairs.push(("policy", p));
            }
            let path = format!("/limits/top?{}", query(&pairs));
            let answers = on_all(admins, |a| call(a, "GET", &path, token, None));
            let merged = merge_top(&answers);
            let out = if json {
                serde_json::to_string_pretty(&merged).unwrap_or_default()
            } else {
                top_table(&merged)
            };
            (out, failures(&answers), true)
        }
        Action::Key { policy, key } => {
            let path = format!("/limits/key?{}", query(&[("policy", policy), ("key", key)]));
            let answers = on_all(admins, |a| call(a, "GET", &path, token, None));
            let out = if json {
                serde_json::to_string_pretty(&answers_json(&answers)).unwrap_or_default()
            } else {
                key_table(&answers)
            };
            (out, failures(&answers), true)
        }
        Action::Reset { policy, key } => {
            let body = json!({"policy": policy, "key": key}).to_string();
            // A shared policy is reset fleet-wide by one replica; a local one on each.
            let shared = admins.iter().find_map(|a| {
                let v = call(a, "GET", "/limits", None, None).ok()?;
                let p = v["policies"]
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == **policy)?;
                Some(p["shared"] != "local")
            });
            let targets = match shared {
                Some(true) => &admins[..admins.len().min(1)],
                _ => admins,
            };
            let answers = on_all(targets, |a| {
                call(a, "POST", "/limits/reset", token, Some(&body))
            });
            let out = if json {
                serde_json::to_string_pretty(&answers_json(&answers)).unwrap_or_default()
            } else {
                answers
                    .iter()
                    .filter_map(|(a, r)| {
                        let v = r.as_ref().ok()?;
                        Some(format!(
                            "reset {policy} {key} on {a} ({})\n",
                            v["reset"].as_str().unwrap_or("?")
                        ))
                    })
                    .collect()
            };
            (out, failures(&answers), true)
        }
        Action::Config => {
            let answers = on_all(admins, |a| call(a, "GET", "/limits", None, None));
            let same = same_config(&answers);
            let out = if json {
                let mut v = answers_json(&answers);
                v["same"] = json!(same);
                serde_json::to_string_pretty(&v).unwrap_or_default()
            } else {
                config_table(&answers, same)
            };
            (out, failures(&answers), same)
        }
    };
    print!("{out}");
    if json && !out.ends_with('\n') {
        println!();
    }
    for e in &errors {
        eprintln!("gateway limits: {e}");
    }
    if errors.is_empty() && ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn failures(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|(a, r)| r.as_ref().err().map(|e| format!("replica {a}: {e}")))
        .collect()
}

fn answers_json(answers: &[Answer]) -> Value {
    let replicas: Vec<Value> = answers
        .iter()
        .map(|(a, r)| match r {
            Ok(v) => json!({"admin": a, "answer": v}),
            Err(e) => json!({"admin": a, "error": e}),
        })
        .collect();
    json!({ "replicas": replicas })
}

/// One key across replicas: refused, admitted, latest `last_refused`, replicas listing it.
type Summed = (u64, u64, String, u64);

/// Sums every replica's `/limits/top` per policy and key (latest `last_refused` wins),
/// heaviest first: `{"policies":[{"policy","top":[{key,refused,admitted,last_refused,replicas}]}]}`.
pub fn merge_top(answers: &[Answer]) -> Value {
    let mut by_policy: BTreeMap<String, BTreeMap<String, Summed>> = BTreeMap::new();
    for v in answers.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        for p in v["policies"].as_array().into_iter().flatten() {
            let name = p["policy"].as_str().unwrap_or_default().to_string();
            let keys = by_policy.entry(name).or_default();
            for e in p["top"].as_array().into_iter().flatten() {
                let k = keys
                    .entry(e["key"].as_str().unwrap_or_default().to_string())
                    .or_default();
                k.0 += e["refused"].as_u64().unwrap_or(0);
                k.1 += e["admitted"].as_u64().unwrap_or(0);
                let last = e["last_refused"].as_str().unwrap_or_default();
                // RFC 3339 in UTC with a fixed width: the string order is the time order.
                if last > k.2.as_str() {
                    k.2 = last.to_string();
                }
                k.3 += 1;
            }
        }
    }
    let policies: Vec<Value> = by_policy
        .into_iter()
        .map(|(policy, keys)| {
            let mut top: Vec<_> = keys.into_iter().collect();
            top.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
            let top: Vec<Value> = top
                .into_iter()
                .map(|(key, (refused, admitted, last, replicas))| {
                    json!({"key": key, "refused": refused, "admitted": admitted, "last_refused": last, "replicas": replicas})
                })
                .collect();
            json!({"policy": policy, "top": top})
        })
        .collect();
    json!({ "policies": policies })
}

/// Every replica answered and all loaded the same bytes.
pub fn same_config(answers: &[Answer]) -> bool {
    let mut hashes = answers
        .iter()
        .map(|(_, r)| r.as_ref().ok().and_then(|v| v["config"]["sha256"].as_str()));
    let first = hashes.next().flatten();
    first.is_some() && hashes.all(|h| h == first)
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn top_table(merged: &Value) -> String {
    let mut rows = vec![[
        "POLICY",
        "KEY",
        "REFUSED",
        "ADMITTED",
        "LAST_REFUSED",
        "REPLICAS",
    ]
    .map(String::from)
    .to_vec()];
    for p in merged["policies"].as_array().into_iter().flatten() {
        for e in p["top"].as_array().into_iter().flatten() {
            rows.push(vec![
                cell(&p["policy"]),
                cell(&e["key"]),
                cell(&e["refused"]),
                cell(&e["admitted"]),
                cell(&e["last_refused"]),
                cell(&e["replicas"]),
            ]);
        }
    }
    table(&rows)
}

fn key_table(answers: &[Answer]) -> String {
    let mut rows = vec![[
        "REPLICA",
        "REMAINING",
        "RESET_AFTER_S",
        "RETRY_AFTER_S",
        "REDIS_HEARD_AGO_S",
    ]
    .map(String::from)
    .to_vec()];
    for (a, r) in answers {
        if let Ok(v) = r {
            rows.push(vec![
                a.clone(),
                cell(&v["remaining"]),
                cell(&v["reset_after_seconds"]),
                cell(&v["retry_after_seconds"]),
                cell(&v["redis"]["heard_seconds_ago"]),
            ]);
        }
    }
    table(&rows)
}

fn config_table(answers: &[Answer], same: bool) -> String {
    let mut rows = vec![
        ["REPLICA", "SHA256", "LOADED_AT", "LAST_RELOAD", "POLICIES"]
            .map(String::from)
            .to_vec(),
    ];
    for (a, r) in answers {
        if let Ok(v) = r {
            let sha = v["config"]["sha256"].as_str().unwrap_or("");
            rows.push(vec![
                a.clone(),
                sha.get(..12).unwrap_or(sha).to_string(),
                cell(&v["config"]["loaded_at"]),
                cell(&v["last_reload"]["result"]),
                v["policies"].as_array().map_or(0, Vec::len).to_string(),
            ]);
        }
    }
    let mut out = table(&rows);
    out.push_str(if same {
        "same config on every replica\n"
    } else {
        "DRIFT: the replicas do not all run the same config (or one did not answer)\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_answer(entries: &[(&str, &str, u64, &str)]) -> Value {
        let mut policies: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (p, k, n, last) in entries {
            policies
                .entry(p)
                .or_default()
                .push(json!({"key": k, "refused": n, "admitted": 1, "last_refused": last}));
        }
        let list: Vec<Value> = policies
            .into_iter()
            .map(|(p, top)| json!({"policy": p, "top": top}))
            .collect();
        json!({"policies": list, "window_seconds": 300})
    }

    #[test]
    fn top_merges_replicas_by_key() {
        let answers: Vec<Answer> = vec![
            (
                "a:1".into(),
                Ok(top_answer(&[
                    ("per-ip", "192.0.2.1", 5, "2026-01-01T00:00:01.000Z"),
                    ("per-ip", "192.0.2.2", 4, "2026-01-01T00:00:02.000Z"),
                ])),
            ),
            (
                "b:1".into(),
                Ok(top_answer(&[
                    ("per-ip", "192.0.2.2", 3, "2026-01-01T00:00:09.000Z"),
                    ("per-user", "alice", 1, "2026-01-01T00:00:03.000Z"),
                ])),
            ),
            ("c:1".into(), Err("down".into())),
        ];
        let m = merge_top(&answers);
        let ip = &m["policies"][0];
        assert_eq!(ip["policy"], "per-ip");
        assert_eq!(
            ip["top"][0],
            json!({"key": "192.0.2.2", "refused": 7, "admitted": 2, "last_refused": "2026-01-01T00:00:09.000Z", "replicas": 2})
        );
        assert_eq!(ip["top"][1]["refused"], 5);
        assert_eq!(m["policies"][1]["top"][0]["key"], "alice");
        let t = top_table(&m);
        assert!(t.starts_with("POLICY"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("192.0.2.2"), "{t}");
        assert_eq!(failures(&answers), ["replica c:1: down"]);
    }

    #[test]
    fn config_drift_table() {
        let cfg = |sha: &str| Ok(json!({"config": {"sha256": sha}, "policies": []}));
        #[rustfmt::skip]
        let cases: Vec<(Vec<Result<Value, String>>, bool)> = vec![
            (vec![cfg("aa"), cfg("aa"), cfg("aa")], true),
            (vec![cfg("aa")], true),
            (vec![cfg("aa"), cfg("bb"), cfg("aa")], false),
            (vec![cfg("aa"), Err("down".into())], false),
            (vec![Err("down".into())], false),
            (vec![], false),
        ];
        for (answers, want) in cases {
            let answers: Vec<Answer> = answers.into_iter().map(|r| ("x:1".into(), r)).collect();
            assert_eq!(same_config(&answers), want, "{answers:?}");
        }
    }

    #[test]
    fn queries_are_encoded_and_down_replicas_named() {
        assert_eq!(
            query(&[("policy", "p"), ("key", "a b&c")]),
            "policy=p&key=a+b%26c"
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = call(&format!("127.0.0.1:{port}"), "GET", "/limits", None, None).unwrap_err();
        assert!(e.starts_with("down"), "{e}");
    }
}
