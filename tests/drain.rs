//! Draining: `Heartbeat::drain`/`undrain`, `HeartbeatBuilder::status` and
//! `regcenter drain`/`undrain`, against a stand-in that records what it is
//! sent and against a real registry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;
use regcenter::{Discovery, Error, Heartbeat, RegistryDiscovery, RegistryServer, Status};

use crate::common::proxy::{Fault, Proxy};
use crate::common::{put_for_a_minute, raw, registry_on, wait_until};

const SECS: Duration = Duration::from_secs(5);
const ADDR: &str = "tcp@127.0.0.1:7001";

/// A registry stand-in that records the headers of every POST and answers
/// it with the status set (200 by default) and a 300 ms TTL, so heartbeats
/// beat every 100 ms. A GET answers `listing` as a JSON listing.
struct Recorder {
    addr: SocketAddr,
    /// The headers of each POST, names lowercased, in order.
    posts: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    answer: Arc<AtomicU16>,
    http: Arc<tiny_http::Server>,
    worker: Option<JoinHandle<()>>,
}

impl Recorder {
    fn start(listing: &'static str) -> Recorder {
        let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = http.server_addr().to_ip().unwrap();
        let posts: Arc<Mutex<Vec<BTreeMap<String, String>>>> = Arc::default();
        let answer = Arc::new(AtomicU16::new(200));
        let (h, p, a) = (http.clone(), posts.clone(), answer.clone());
        let worker = thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                while let Ok(rq) = h.recv() {
                    let header = |n: &str, v: &str| tiny_http::Header::from_bytes(n, v).unwrap();
                    let resp = match rq.method() {
                        tiny_http::Method::Post => {
                            p.lock().push(
                                rq.headers()
                                    .iter()
                                    .map(|h| {
                                        (
                                            h.field.as_str().as_str().to_ascii_lowercase(),
                                            h.value.as_str().to_string(),
                                        )
                                    })
                                    .collect(),
                            );
                            let status = a.load(Ordering::SeqCst);
                            tiny_http::Response::from_string(if status == 200 {
                                ""
                            } else {
                                "refused by the recorder\n"
                            })
                            .with_status_code(status)
                            .with_header(header("X-Myrpc-Ttl", "300ms"))
                            .with_header(header("X-Myrpc-Index", "7"))
                        }
                        tiny_http::Method::Get => tiny_http::Response::from_string(listing)
                            .with_header(header("X-Myrpc-Index", "7"))
                            .with_header(header("Content-Type", "application/json")),
                        _ => tiny_http::Response::from_string(""),
                    };
                    let _ = rq.respond(resp);
                }
            })
            .unwrap();
        Recorder {
            addr,
            posts,
            answer,
            http,
            worker: Some(worker),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/myRPC/registry", self.addr)
    }

    /// The `X-Myrpc-Status` of each POST so far (`None`: not sent).
    fn statuses(&self) -> Vec<Option<String>> {
        self.posts
            .lock()
            .iter()
            .map(|h| h.get("x-myrpc-status").cloned())
            .collect()
    }

    /// Whether, from the first POST carrying `status` on, every POST
    /// carries it and at least `later` more followed the first.
    fn carried_since(&self, status: &str, later: usize) -> bool {
        let s = self.statuses();
        let Some(first) = s.iter().position(|v| v.as_deref() == Some(status)) else {
            return false;
        };
        s[first..].iter().all(|v| v.as_deref() == Some(status)) && s.len() - first > later
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[test]
fn drain_tells_every_registry_and_every_later_beat_carries_it() {
    let (a, b) = (Recorder::start(""), Recorder::start(""));
    let hb = Heartbeat::builder(&a.url(), ADDR)
        .also(&b.url())
        .weight(3)
        .start()
        .unwrap();
    wait_until("beats at both", SECS, || {
        a.statuses().len() >= 2 && b.statuses().len() >= 2
    });
    assert_eq!(hb.status(), None);
    assert!(
        a.statuses().iter().all(Option::is_none),
        "a heartbeat whose status was never set sends none"
    );

    hb.drain().unwrap();
    assert_eq!(hb.status(), Some(Status::Draining));
    for r in [&a, &b] {
        assert!(r.carried_since("draining", 0), "{:?}", r.statuses());
        let last = r.posts.lock().last().cloned().unwrap();
        assert_eq!(last.get("x-myrpc-weight").map(String::as_str), Some("3"));
        assert_eq!(last.get("x-myrpc-server").map(String::as_str), Some(ADDR));
    }
    wait_until("later beats to carry draining", SECS, || {
        a.carried_since("draining", 2) && b.carried_since("draining", 2)
    });

    hb.undrain().unwrap();
    assert_eq!(hb.status(), Some(Status::Up));
    assert!(a.carried_since("up", 0) && b.carried_since("up", 0));
    wait_until("later beats to carry up", SECS, || {
        a.carried_since("up", 2) && b.carried_since("up", 2)
    });
    hb.stop().unwrap();
}

#[test]
fn drain_fails_only_when_no_registry_acknowledges_and_the_status_stays() {
    let (a, b) = (Recorder::start(""), Recorder::start(""));
    let hb = Heartbeat::builder(&a.url(), ADDR)
        .also(&b.url())
        .start()
        .unwrap();
    b.answer(503);
    hb.drain().expect("a acknowledged");

    a.answer(503);
    let e = hb.undrain().unwrap_err();
    assert!(matches!(e, Error::Status { status: 503, .. }), "{e}");
    assert_eq!(hb.status(), Some(Status::Up), "the status is in force");
    // Once a registry answers again, the beats tell it.
    let seen = a.statuses().len();
    a.answer(200);
    wait_until("a later beat to carry up", SECS, || {
        a.statuses().len() > seen + 1 && a.carried_since("up", 1)
    });
    hb.stop().unwrap();
}

#[test]
fn a_heartbeat_built_drained_says_so_in_its_first_beat() {
    let a = Recorder::start("");
    let hb = Heartbeat::builder(&a.url(), ADDR)
        .status(Status::Draining)
        .start()
        .unwrap();
    assert_eq!(a.statuses(), [Some("draining".to_string())]);
    assert_eq!(hb.status(), Some(Status::Draining));
    hb.stop().unwrap();
}

#[test]
fn drain_is_refused_once_every_registry_refused_the_heartbeat() {
    let s = RegistryServer::start_local().unwrap();
    let proxy = Proxy::start(s.local_addr());
    let hb = Heartbeat::builder(&proxy.url(), ADDR)
        .period(Duration::from_millis(20))
        .start()
        .unwrap();
    proxy.set(Fault::Reply(401, "missing or wrong bearer token\n"));
    wait_until("the refusal", SECS, || !hb.is_running());
    let e = hb.drain().unwrap_err();
    assert!(matches!(e, Error::Stopped { .. }), "{e}");
    assert!(e.to_string().contains("401"), "{e}");
}

// `regcenter drain` and `regcenter undrain`.

fn regcenter(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args(args)
        .env("REGCENTER_LOG", "warn")
        .env_remove("REGCENTER_TOKEN")
        .output()
        .expect("run regcenter")
}

const LISTING: &str = r#"{"service":"","index":7,"servers":[{"addr":"tcp@127.0.0.1:7001","weight":4,"meta":{"zone":"eu west"},"expires_in_ms":4321}]}"#;

#[test]
fn drain_command_sends_the_status_and_keeps_weight_meta_and_deadline() {
    let r = Recorder::start(LISTING);
    let url = r.url();
    let out = regcenter(&["drain", "--registry", &url, "--addr", ADDR]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let posts = r.posts.lock().clone();
    assert_eq!(posts.len(), 1, "a single POST");
    let h = &posts[0];
    assert_eq!(h["x-myrpc-status"], "draining");
    assert_eq!(h["x-myrpc-server"], ADDR);
    assert_eq!(h["x-myrpc-weight"], "4");
    assert_eq!(h["x-myrpc-meta"], "zone=eu%20west");
    assert_eq!(h["x-myrpc-ttl"], "4.321s", "the deadline it had");

    let out = regcenter(&["undrain", "--registry", &url, "--addr", ADDR]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(r.posts.lock()[1]["x-myrpc-status"], "up");
}

#[test]
fn drain_command_exit_codes() {
    let r = Recorder::start(LISTING);
    let url = r.url();
    let code = |args: &[&str]| {
        let out = regcenter(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("regcenter: "), "{err}");
        (out.status.code(), err)
    };
    assert_eq!(code(&["drain", "--registry", &url]).0, Some(2), "no --addr");
    assert_eq!(
        code(&["undrain", "--registry", &url, "--addr", "a b"]).0,
        Some(2)
    );
    assert_eq!(
        code(&["drain", "--registry", &url, "--addr", ADDR, "--ttl", "5s"]).0,
        Some(2),
        "a flag drain does not take"
    );
    let (c, err) = code(&["drain", "--registry", &url, "--addr", "tcp@nobody:1"]);
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("not registered"), "{err}");
    assert_eq!(r.posts.lock().len(), 0, "nothing registered by accident");

    r.answer(400);
    let (c, err) = code(&["drain", "--registry", &url, "--addr", ADDR]);
    assert_eq!(c, Some(2), "a 400 from the registry: {err}");
    assert!(err.contains("400"), "{err}");

    // Unreachable: a port nothing listens on any more.
    let gone = RegistryServer::start_local().unwrap();
    let gone_url = gone.url().to_string();
    gone.shutdown().unwrap();
    assert_eq!(
        code(&["drain", "--registry", &gone_url, "--addr", ADDR]).0,
        Some(1)
    );
}

#[test]
fn drain_command_against_a_registry_keeps_the_entry_as_it_was() {
    let s = RegistryServer::start_local().unwrap();
    let opts = regcenter::PutOptions::new()
        .ttl(Duration::from_secs(60))
        .weight(3)
        .meta("zone", "eu");
    s.registry().put_with("arith", ADDR, &opts).unwrap();
    let out = regcenter(&[
        "drain",
        "--registry",
        s.url(),
        "--service",
        "arith",
        "--addr",
        ADDR,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = s.registry().entries();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].weight, 3);
    assert_eq!(e[0].meta.get("zone").map(String::as_str), Some("eu"));
    assert!(
        e[0].expires_in.is_some_and(|t| t > Duration::from_secs(50)),
        "{:?}",
        e[0].expires_in
    );
}

// The tests below are of the registry's side of status as much as of the
// heartbeat's: X-Myrpc-Status on POST, sticky, draining entries out of the
// seed and text listings, a change of status waking watchers.

/// The seed's header, the text listing and the JSON listing of the default
/// service.
fn listings(s: &RegistryServer) -> (String, String, serde_json::Value) {
    let path = "/myRPC/registry";
    let seed = raw(s.local_addr(), "GET", path, &[]);
    let text = raw(s.local_addr(), "GET", &format!("{path}?format=text"), &[]);
    let json = raw(s.local_addr(), "GET", &format!("{path}?format=json"), &[]);
    (
        seed.header("X-Myrpc-Servers").unwrap_or("").to_string(),
        text.text(),
        serde_json::from_slice(&json.body).unwrap(),
    )
}

/// The `"status"` of `addr` in a JSON listing.
fn json_status(json: &serde_json::Value, addr: &str) -> Option<String> {
    json["servers"]
        .as_array()?
        .iter()
        .find(|e| e["addr"] == addr)
        .map(|e| e["status"].as_str().unwrap_or("up").to_string())
}

#[test]
fn a_drained_server_leaves_the_seed_and_text_listings_and_shows_in_json() {
    let s = registry_on("127.0.0.1:0");
    put_for_a_minute(s.registry(), "", "tcp@other:1");
    let hb = Heartbeat::builder(s.url(), ADDR).start().unwrap();
    assert_eq!(listings(&s).0, format!("{ADDR},tcp@other:1"));

    hb.drain().unwrap();
    let (seed, text, json) = listings(&s);
    assert_eq!(seed, "tcp@other:1");
    assert_eq!(text, "tcp@other:1\n");
    assert_eq!(json_status(&json, ADDR).as_deref(), Some("draining"));
    // It renews while draining: still there after several TTLs.
    let beats = hb.beats();
    wait_until("renewals while draining", SECS, || hb.beats() >= beats + 6);
    assert_eq!(
        json_status(&listings(&s).2, ADDR).as_deref(),
        Some("draining")
    );

    hb.undrain().unwrap();
    assert_eq!(listings(&s).0, format!("{ADDR},tcp@other:1"));
    hb.stop().unwrap();
}

#[test]
fn a_drain_wakes_watchers_and_moves_the_index() {
    // A registry that started empty says so until its longest TTL has
    // passed, and discoveries then keep their last list beside the new one:
    // a short longest TTL, and a wait for its end, keep that out of this.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_millis(300))
        .min_ttl(Duration::from_millis(50))
        .max_ttl(Duration::from_millis(300))
        .threads(2)
        .start()
        .unwrap();
    wait_until("the registry to be out of recovery", SECS, || {
        let seed = raw(s.local_addr(), "GET", "/myRPC/registry", &[]);
        seed.header("X-Myrpc-Recovering") != Some("true")
    });
    let hb = Heartbeat::builder(s.url(), ADDR).start().unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .watch(true)
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), [ADDR]);
    let before = d.index();
    hb.drain().unwrap();
    let after = d.wait_for_change(before, SECS);
    assert!(after > before, "{before:?} -> {after:?}");
    assert!(d.get_all().unwrap().is_empty(), "the watcher saw the drain");
    d.stop().unwrap();
    hb.stop().unwrap();
}

#[test]
fn a_restarted_registry_learns_the_drain_from_the_next_beat() {
    let s = registry_on("127.0.0.1:0");
    let addr = s.local_addr().to_string();
    let hb = Heartbeat::builder(s.url(), ADDR).start().unwrap();
    hb.drain().unwrap();
    s.shutdown().unwrap();
    let restarted = registry_on(&addr);
    wait_until("the server to be back, draining", SECS, || {
        json_status(&listings(&restarted).2, ADDR).as_deref() == Some("draining")
    });
    assert_eq!(listings(&restarted).0, "");
    hb.stop().unwrap();
}

#[test]
fn drain_command_drains_and_undrain_takes_it_back_at_a_registry() {
    let s = registry_on("127.0.0.1:0");
    put_for_a_minute(s.registry(), "", ADDR);
    let run = |command: &str| {
        let out = regcenter(&[command, "--registry", s.url(), "--addr", ADDR]);
        assert!(out.status.success(), "{command}: {out:?}");
    };
    run("drain");
    let (seed, _, json) = listings(&s);
    assert_eq!(seed, "");
    assert_eq!(json_status(&json, ADDR).as_deref(), Some("draining"));
    run("undrain");
    assert_eq!(listings(&s).0, ADDR);
}
