//! `ClusterLink` against scripted fake nodes on loopback (a few lines of RESP): the
//! redirects and failures a real cluster only shows by chance: `READONLY`, `CLUSTERDOWN`,
//! `MOVED` loops, malformed redirects, `NOSCRIPT`, a node that never answers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::slots::NodeAddr;
use super::{CallError, ClusterLink};
use redis::Value;

/// Per-connection state a fake node sees: whether `ASKING` came first.
#[derive(Default)]
struct ConnState {
    asking: bool,
}

/// The reply to one command (RESP text), or `None` to never answer.
type Handler = Arc<dyn Fn(&mut ConnState, &[String]) -> Option<String> + Send + Sync>;

/// Parses one RESP array of bulk strings at the start of `buf`: (args, bytes used).
fn parse(buf: &[u8]) -> Option<(Vec<String>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        args.push(String::from_utf8_lossy(&buf[next..next + len]).into_owned());
        at = next + len + 2;
    }
    Some((args, at))
}

/// A fake node on a free loopback port; answers `CLUSTER SLOTS` with `slots` (RESP text
/// built by `slots_reply`), `SCRIPT LOAD` with a hash, anything else via `handler`.
async fn fake(slots: Arc<std::sync::Mutex<String>>, handler: Handler) -> NodeAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let slots = slots.clone();
            tokio::spawn(async move {
                let mut state = ConnState::default();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = String::new();
                    while let Some((args, used)) = parse(&buf) {
                        buf.drain(..used);
                        let name = args[0].to_ascii_uppercase();
                        let sub = args.get(1).map(|s| s.to_ascii_uppercase());
                        let reply = match (name.as_str(), sub.as_deref()) {
                            ("CLUSTER", Some("SLOTS")) => Some(slots.lock().unwrap().clone()),
                            ("SCRIPT", Some("LOAD")) => {
                                Some(format!("$40\r\n{}\r\n", "a".repeat(40)))
                            }
                            ("CLIENT", _) => Some("+OK\r\n".into()),
                            ("ASKING", _) => {
                                state.asking = true;
                                Some("+OK\r\n".into())
                            }
                            _ => {
                                let r = handler(&mut state, &args);
                                state.asking = false;
                                r
                            }
                        };
                        match reply {
                            Some(r) => out.push_str(&r),
                            None => {
                                // Hang: read on, never answer.
                                out.clear();
                                break;
                            }
                        }
                    }
                    if !out.is_empty() && sock.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    NodeAddr {
        host: "127.0.0.1".into(),
        port,
    }
}

/// `CLUSTER SLOTS` as RESP: `(first, last, master port)` ranges.
fn slots_reply(ranges: &[(u16, u16, u16)]) -> String {
    let mut s = format!("*{}\r\n", ranges.len());
    for (a, b, port) in ranges {
        s.push_str(&format!(
            "*3\r\n:{a}\r\n:{b}\r\n*2\r\n$9\r\n127.0.0.1\r\n:{port}\r\n"
        ));
    }
    s
}

fn shared_slots() -> Arc<std::sync::Mutex<String>> {
    Arc::new(std::sync::Mutex::new(String::new()))
}

fn link(seed: &NodeAddr) -> ClusterLink {
    let template =
        redis::IntoConnectionInfo::into_connection_info(format!("redis://{seed}")).unwrap();
    ClusterLink::new(template, vec![seed.clone()])
        .with_scripts(&["return 1"])
        .with_connect_timeout(Duration::from_millis(200))
}

fn answer(s: &'static str) -> Handler {
    Arc::new(move |_: &mut ConnState, _: &[String]| Some(s.to_string()))
}

fn get(slot: u16) -> super::Call {
    super::Call {
        slot,
        cmd: redis::cmd("GET").arg("k").clone(),
    }
}

/// Two fake nodes: `a` owns every slot in the map both serve.
async fn pair(a: Handler, b: Handler) -> (NodeAddr, NodeAddr, Arc<std::sync::Mutex<String>>) {
    let slots = shared_slots();
    let a = fake(slots.clone(), a).await;
    let b = fake(slots.clone(), b).await;
    *slots.lock().unwrap() = slots_reply(&[(0, 16383, a.port)]);
    (a, b, slots)
}

/// A node that answers every command with `<kind> 5 <b>`, b's port set once b is up.
fn redirecting(kind: &'static str) -> (Arc<AtomicU32>, Handler) {
    let b_port = Arc::new(AtomicU32::new(0));
    let bp = b_port.clone();
    let a: Handler = Arc::new(move |_: &mut ConnState, _: &[String]| {
        Some(format!(
            "-{kind} 5 127.0.0.1:{}\r\n",
            bp.load(Ordering::Relaxed)
        ))
    });
    (b_port, a)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(500)
}

#[tokio::test]
async fn moved_updates_the_map_and_lands() {
    let (b_port, a) = redirecting("MOVED");
    let (a, b, _) = pair(a, answer(":7\r\n")).await;
    b_port.store(u32::from(b.port), Ordering::Relaxed);
    let mut l = link(&a);
    assert_eq!(l.call(5, get(5).cmd, soon()).await, Ok(Value::Int(7)));
    let s = l.stats();
    assert_eq!((s.moved, s.ask, s.slots_refresh), (1, 0, 1));
    assert_eq!(l.slot_map().master_of(5), Some(&b));
    assert_eq!(l.slot_map().master_of(6), Some(&a));
    assert!(l.refresh_due(), "a MOVED schedules a refresh");
}

#[tokio::test]
async fn ask_goes_to_the_target_once_with_asking_and_keeps_the_map() {
    let (b_port, a) = redirecting("ASK");
    // The target serves the slot only after ASKING, as an importing node does.
    let b: Handler = Arc::new(|st: &mut ConnState, _: &[String]| {
        Some(
            if st.asking {
                ":1\r\n"
            } else {
                "-MOVED 5 127.0.0.1:1\r\n"
            }
            .to_string(),
        )
    });
    let (a, b, _) = pair(a, b).await;
    b_port.store(u32::from(b.port), Ordering::Relaxed);
    let mut l = link(&a);
    let r = l.run(vec![get(5), get(6)], soon()).await;
    assert_eq!(r, vec![Ok(Value::Int(1)), Ok(Value::Int(1))]);
    assert_eq!(l.stats().ask, 2);
    assert_eq!(l.stats().moved, 0);
    assert_eq!(l.slot_map().master_of(5), Some(&a), "ASK leaves the map");
    assert!(!l.refresh_due());
}

#[tokio::test]
async fn readonly_or_tryagain_refreshes_and_retries_once() {
    for first in [
        "-READONLY You can't write against a read only replica.\r\n",
        "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
    ] {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let a: Handler = Arc::new(move |_: &mut ConnState, _: &[String]| {
            Some(
                if c.fetch_add(1, Ordering::Relaxed) == 0 {
                    first
                } else {
                    ":3\r\n"
                }
                .to_string(),
            )
        });
        let (a, _, _) = pair(a, answer(":0\r\n")).await;
        let mut l = link(&a);
        let started = Instant::now();
        assert_eq!(
            l.call(9, get(9).cmd, soon()).await,
            Ok(Value::Int(3)),
            "{first}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "retried a little later"
        );
        assert_eq!(l.stats().later, 1);
        assert_eq!(l.stats().slots_refresh, 2, "refreshed before the retry");
    }
}

#[tokio::test]
async fn clusterdown_fails_after_one_retry_not_at_the_deadline() {
    let (a, _, _) = pair(
        answer("-CLUSTERDOWN The cluster is down\r\n"),
        answer(":0\r\n"),
    )
    .await;
    let mut l = link(&a);
    let started = Instant::now();
    let r = l
        .call(1, get(1).cmd, Instant::now() + Duration::from_secs(2))
        .await;
    assert!(
        matches!(&r, Err(CallError::Server { code, .. }) if code == "CLUSTERDOWN"),
        "{r:?}"
    );
    assert!(!r.as_ref().unwrap_err().may_have_run());
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(l.stats().later, 1);
}

#[tokio::test]
async fn a_moved_loop_stops_at_the_hop_budget() {
    let ports = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let (p1, p2) = (ports.clone(), ports.clone());
    let a: Handler = Arc::new(move |_: &mut ConnState, _: &[String]| {
        Some(format!(
            "-MOVED 2 127.0.0.1:{}\r\n",
            p1[1].load(Ordering::Relaxed)
        ))
    });
    let b: Handler = Arc::new(move |_: &mut ConnState, _: &[String]| {
        Some(format!(
            "-MOVED 2 127.0.0.1:{}\r\n",
            p2[0].load(Ordering::Relaxed)
        ))
    });
    let (a, b, _) = pair(a, b).await;
    ports[0].store(u32::from(a.port), Ordering::Relaxed);
    ports[1].store(u32::from(b.port), Ordering::Relaxed);
    let mut l = link(&a);
    let r = l.call(2, get(2).cmd, soon()).await;
    assert!(
        matches!(&r, Err(CallError::Server { code, .. }) if code == "MOVED"),
        "{r:?}"
    );
    assert_eq!(l.stats().moved, u64::from(super::MAX_HOPS));
}

#[tokio::test]
async fn hostile_redirects_and_errors_fail_the_call_only() {
    for (reply, code) in [
        ("-MOVED banana\r\n", "MOVED"),
        ("-ASK 99999 127.0.0.1:1\r\n", "ASK"),
        ("-MOVED 5 127.0.0.1:0\r\n", "MOVED"),
        (
            "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "CROSSSLOT",
        ),
        ("-NOPERM this user has no permissions\r\n", "NOPERM"),
        ("-ERR user_script:1: boom\r\n", "ERR"),
    ] {
        let (a, _, _) = pair(answer(reply), answer(":0\r\n")).await;
        let mut l = link(&a);
        let r = l.call(5, get(5).cmd, soon()).await;
        assert!(
            matches!(&r, Err(CallError::Server { code: c, .. }) if c == code),
            "{reply:?}: {r:?}"
        );
        let s = l.stats();
        assert_eq!((s.moved, s.ask), (0, 0), "{reply:?}");
        assert_eq!(l.slot_map().master_of(5), Some(&a));
    }
}

#[tokio::test]
async fn noscript_loads_the_scripts_on_that_node_and_retries() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let a: Handler = Arc::new(move |_: &mut ConnState, _: &[String]| {
        Some(
            if c.fetch_add(1, Ordering::Relaxed) == 0 {
                "-NOSCRIPT No matching script.\r\n"
            } else {
                ":4\r\n"
            }
            .to_string(),
        )
    });
    let (a, _, _) = pair(a, answer(":0\r\n")).await;
    let mut l = link(&a);
    assert_eq!(l.call(5, get(5).cmd, soon()).await, Ok(Value::Int(4)));
    // Once when the connection opened, once after the NOSCRIPT (a `SCRIPT FLUSH`, say).
    assert_eq!(l.stats().script_loads, 2);
}

#[tokio::test]
async fn a_hung_node_times_out_alone() {
    let slots = shared_slots();
    let hung = fake(
        slots.clone(),
        Arc::new(|_: &mut ConnState, _: &[String]| None),
    )
    .await;
    let ok = fake(slots.clone(), answer(":1\r\n")).await;
    *slots.lock().unwrap() = slots_reply(&[(0, 8191, hung.port), (8192, 16383, ok.port)]);
    let mut l = link(&ok);
    let started = Instant::now();
    let r = l
        .run(
            vec![get(10), get(9000), get(10000)],
            Instant::now() + Duration::from_millis(300),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(r[0], Err(CallError::Timeout));
    assert!(r[0].as_ref().unwrap_err().may_have_run());
    assert_eq!(r[1..], [Ok(Value::Int(1)), Ok(Value::Int(1))]);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(450),
        "{took:?}"
    );
    assert!(l.refresh_due(), "a timed-out node asks for a refresh");
    // The hung socket is dropped: the next run connects afresh (and still gets nothing).
    let r = l
        .run(vec![get(10)], Instant::now() + Duration::from_millis(200))
        .await;
    assert_eq!(r[0], Err(CallError::Timeout));
}

#[test]
fn resp_parser_waits_for_whole_commands() {
    let full = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    assert_eq!(
        parse(full),
        Some((vec!["GET".into(), "k".into()], full.len()))
    );
    for cut in 0..full.len() {
        assert_eq!(parse(&full[..cut]), None, "{cut}");
    }
}

#[tokio::test]
async fn every_new_node_connection_loads_the_scripts() {
    // Redis does not replicate SCRIPT LOAD: a promoted replica has none, and the request
    // path cannot load them, so every connection the link opens loads them first.
    let slots = shared_slots();
    let a = fake(slots.clone(), answer(":1\r\n")).await;
    let b = fake(slots.clone(), answer(":1\r\n")).await;
    *slots.lock().unwrap() = slots_reply(&[(0, 8000, a.port), (8001, 16383, b.port)]);
    let mut l = link(&a);
    l.refresh(soon()).await.unwrap();
    assert_eq!(l.stats().script_loads, 1, "the seed's connection");
    assert!(l.connection_for_slot(9000).is_none());
    l.connect_masters(soon()).await;
    assert_eq!(l.stats().script_loads, 2, "the other master's connection");
    assert!(l.routes().connection_for_slot(9000).is_some());
    l.connect_masters(soon()).await;
    assert_eq!(l.stats().script_loads, 2, "open connections are kept");
}
