//! The Kubernetes kit's drain order, replayed on loopback with real processes: the real app
//! behind a real gateway under bounded keep-alive load, then the pod's termination exactly as
//! the kubelet runs it for deploy/kubernetes (numbers read from the kit, not copied here):
//!
//! - t0, the pod starts terminating: the gateway's preStop hook (`gateway drain`) runs, and
//!   the app's preStop sleep starts; the endpoints drop the pod, and clients keep sending for
//!   a while (here: until 1 s before `shutdown_delay` ends);
//! - t0 + the app's preStop sleep: SIGTERM to the app (the main container);
//! - once the app has exited: SIGTERM to the gateway (a native sidecar stops last).
//!
//! Not one request may fail, /readyz must fail from t0, the listener must close once the delay
//! is over, and the gateway must have exited before the app was stopped.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The kit's termination numbers.
struct Kit {
    /// The app container's preStop sleep.
    app_pre_stop: Duration,
    termination_grace: Duration,
    /// The gateway container's preStop command.
    gateway_pre_stop: Vec<String>,
    shutdown_delay: Duration,
    shutdown_grace: Duration,
}

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn duration(v: &serde_yaml::Value) -> Duration {
    humantime::parse_duration(v.as_str().unwrap()).unwrap()
}

fn kit() -> Kit {
    let dep = yaml("deploy/kubernetes/base/deployment.yaml");
    let pod = &dep["spec"]["template"]["spec"];
    let app = &pod["containers"][0];
    let gateway = &pod["initContainers"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(gateway["name"], "gateway");
    assert_eq!(gateway["restartPolicy"], "Always", "a native sidecar");
    let secs = |v: &serde_yaml::Value| Duration::from_secs(v.as_u64().unwrap());
    let config = yaml("deploy/kubernetes/base/gateway.yaml");
    Kit {
        app_pre_stop: secs(&app["lifecycle"]["preStop"]["sleep"]["seconds"]),
        termination_grace: secs(&pod["terminationGracePeriodSeconds"]),
        gateway_pre_stop: gateway["lifecycle"]["preStop"]["exec"]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        shutdown_delay: duration(&config["timeouts"]["shutdown_delay"]),
        shutdown_grace: duration(&config["timeouts"]["shutdown_grace"]),
    }
}

/// Waits for `p` to exit within what is left of the pod's grace period; it must exit cleanly.
fn exits_cleanly(p: &mut Proc, left: Duration, what: &str) {
    let (_, status) = p
        .wait_exit(left)
        .unwrap_or_else(|| panic!("{what} did not exit within the pod's grace period"));
    assert!(status.success(), "{what}: {status}");
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    after_t0: AtomicUsize,
    failed: AtomicUsize,
}

#[tokio::test]
async fn pod_termination_in_the_kits_order_fails_no_request() {
    let kit = kit();
    assert!(
        kit.shutdown_delay >= Duration::from_secs(2),
        "the replay needs traffic inside the delay"
    );
    let (_keys_dir, keys) = dev_key_file();
    let mut app = AppProc::start(&keys);
    let timeouts = format!(
        "timeouts:\n  shutdown_delay: {}s\n  shutdown_grace: {}s\n",
        kit.shutdown_delay.as_secs(),
        kit.shutdown_grace.as_secs()
    );
    let mut gw = GatewayProc::start(app.addr, &timeouts);
    gw.wait_ready(200);

    // Bounded load: 4 keep-alive clients until the endpoints have dropped the pod.
    let url = format!("http://{}/v1/documents", gw.addr);
    let token = mint_token("u-alice", Duration::from_secs(600));
    let tally = Arc::new(Tally::default());
    let (stop, terminating) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, token, tally) = (url.clone(), token.clone(), tally.clone());
        let (stop, terminating) = (stop.clone(), terminating.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let during = terminating.load(Ordering::Relaxed);
                let sent = client.get(&url).bearer_auth(&token).send().await;
                let answer = match sent {
                    Ok(r) => {
                        let status = r.status();
                        r.bytes().await.map(|_| status)
                    }
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(status) if status == 200 => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if during {
                            tally.after_t0.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(status) => {
                        eprintln!("failed: status {status}");
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // t0: the pod is deleted. preStop hooks run: the gateway's `drain` (its own binary, told
    // the gateway's pid: in the pod it is pid 1), the app's sleep.
    let t0 = Instant::now();
    terminating.store(true, Ordering::Relaxed);
    let hook = &kit.gateway_pre_stop;
    assert!(hook[0].ends_with("/gateway") && hook[1..] == ["drain".to_string()]);
    let pid = gw.proc.pid().to_string();
    run_gateway_ok(hook[1..].iter().map(String::as_str).chain(["--pid", &pid]));
    let not_ready = || get_blocking(gw.admin, "/readyz").is_ok_and(|r| r.status == 503);
    assert!(
        wait_until(Duration::from_millis(500), not_ready),
        "/readyz fails from t0"
    );

    // Clients stop sending once the endpoints are updated, before the delay ends.
    tokio::time::sleep((kit.shutdown_delay - Duration::from_secs(1)).saturating_sub(t0.elapsed()))
        .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Delay over: the listener is closed.
    tokio::time::sleep(
        (kit.shutdown_delay + Duration::from_millis(500)).saturating_sub(t0.elapsed()),
    )
    .await;
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "listener closed after shutdown_delay"
    );

    // t0 + the app's preStop sleep: the kubelet stops the app, then (native sidecar) the gateway.
    tokio::time::sleep(kit.app_pre_stop.saturating_sub(t0.elapsed())).await;
    let gateway_gone = gw.proc.guard.exited();
    app.proc.signal("-TERM");
    let grace_left = || kit.termination_grace.saturating_sub(t0.elapsed());
    exits_cleanly(&mut app.proc, grace_left(), "app");
    if gateway_gone.is_none() {
        gw.proc.signal("-TERM");
    }
    exits_cleanly(&mut gw.proc, grace_left(), "gateway");
    assert!(
        gateway_gone.is_some(),
        "the gateway's drain (delay {:?} + grace {:?}) ended before the app's preStop sleep ({:?})",
        kit.shutdown_delay,
        kit.shutdown_grace,
        kit.app_pre_stop
    );

    let (ok, after, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.after_t0.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("requests: {ok} ok ({after} after t0), {failed} failed");
    assert_eq!(failed, 0, "no request may fail");
    assert!(
        after >= 100,
        "traffic was served during the delay ({after})"
    );
}
