//! Long-poll watch over loopback.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use regcenter::RegistryServer;

use crate::common::{Raw, raw, wait_until};

const P: &str = "/myRPC/registry";
const SOON: Duration = Duration::from_secs(2);

fn server() -> RegistryServer {
    RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_millis(300))
        .min_ttl(Duration::from_millis(50))
        .start()
        .unwrap()
}

fn index(r: &Raw) -> u64 {
    r.header("X-Myrpc-Index").unwrap().parse().unwrap()
}

/// Starts a long-poll in a thread; returns when the server has parked it.
fn watch(s: &RegistryServer, query: &str) -> JoinHandle<(Raw, Duration)> {
    let before = s.parked();
    let addr = s.local_addr();
    let path = format!("{P}/svc?format=text&{query}");
    let h = thread::spawn(move || {
        let t = Instant::now();
        let r = raw(addr, "GET", &path, &[]);
        (r, t.elapsed())
    });
    wait_until("the watch to be parked", SOON, || s.parked() > before);
    h
}

fn current(s: &RegistryServer) -> u64 {
    index(&raw(s.local_addr(), "GET", &format!("{P}/svc"), &[]))
}

#[test]
fn a_register_wakes_a_watcher_but_a_renewal_does_not() {
    let s = server();
    s.registry().put("svc", "tcp@a:1").unwrap();
    let n = current(&s);
    let w = watch(&s, &format!("index={n}&wait=30s"));
    s.registry().put("svc", "tcp@a:1").unwrap(); // renewal
    s.registry().put("other", "tcp@x:1").unwrap(); // another service
    // Both were committed before this line; the watcher must still wait.
    assert_eq!(s.parked(), 1, "woken by a renewal or another service");
    let t = Instant::now();
    s.registry().put("svc", "tcp@b:1").unwrap();
    let (r, _) = w.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.text(), "tcp@a:1\ntcp@b:1\n");
    assert!(index(&r) > n);
}

#[test]
fn a_deregister_over_http_wakes_a_watcher() {
    let s = server();
    crate::common::put_for_a_minute(s.registry(), "svc", "tcp@a:1");
    let n = current(&s);
    let w = watch(&s, &format!("index={n}"));
    let r = raw(
        s.local_addr(),
        "DELETE",
        &format!("{P}/svc"),
        &[("X-Myrpc-Server", "tcp@a:1")],
    );
    assert_eq!(r.status, 200);
    let (r, took) = w.join().unwrap();
    assert_eq!(r.text(), "");
    assert!(index(&r) > n);
    assert!(took < SOON);
}

#[test]
fn an_expiry_wakes_a_watcher() {
    let s = server();
    s.registry().put("svc", "tcp@a:1").unwrap(); // TTL 300 ms
    let n = current(&s);
    let w = watch(&s, &format!("index={n}&wait=30s"));
    let (r, took) = w.join().unwrap();
    assert_eq!(r.text(), "", "answered by the sweeper's expiry");
    assert!(index(&r) > n);
    assert!(took < SOON, "{took:?}");
}

#[test]
fn a_wait_that_passes_answers_the_same_index() {
    let s = server();
    crate::common::put_for_a_minute(s.registry(), "svc", "tcp@a:1");
    let n = current(&s);
    let w = watch(&s, &format!("index={n}&wait=200ms"));
    let (r, took) = w.join().unwrap();
    assert_eq!(index(&r), n);
    assert_eq!(r.text(), "tcp@a:1\n");
    // 200 ms plus at most 1/16 of it, plus scheduling.
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[test]
fn an_index_from_before_a_restart_is_answered_at_once() {
    let s = server();
    let t = Instant::now();
    let r = raw(
        s.local_addr(),
        "GET",
        &format!("{P}/svc?index=999999&wait=30s"),
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < SOON);
    let r = raw(s.local_addr(), "GET", &format!("{P}/svc?index=abc"), &[]);
    assert_eq!(r.status, 400);
    let r = raw(
        s.local_addr(),
        "GET",
        &format!("{P}/svc?index=1&wait=soon"),
        &[],
    );
    assert_eq!(r.status, 400);
}

#[test]
fn two_hundred_watchers_are_all_answered_after_one_change() {
    let s = server();
    let n = current(&s);
    let addr = s.local_addr();
    let watchers: Vec<_> = (0..200)
        .map(|_| {
            let path = format!("{P}/svc?format=text&index={n}&wait=60s");
            thread::spawn(move || raw(addr, "GET", &path, &[]))
        })
        .collect();
    wait_until("200 parked watchers", Duration::from_secs(10), || {
        s.parked() == 200
    });
    let t = Instant::now();
    crate::common::put_for_a_minute(s.registry(), "svc", "tcp@new:1");
    for w in watchers {
        let r = w.join().unwrap();
        assert_eq!(r.text(), "tcp@new:1\n");
    }
    assert!(t.elapsed() < SOON, "{:?}", t.elapsed());
    assert_eq!(s.parked(), 0);
}

#[test]
fn shutdown_answers_parked_watchers() {
    let s = server();
    let n = current(&s);
    let w = watch(&s, &format!("index={n}&wait=60s"));
    let t = Instant::now();
    s.shutdown().unwrap();
    let (r, _) = w.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < SOON);
}

#[test]
fn json_lists_weight_meta_and_expiry() {
    let s = server();
    let r = raw(
        s.local_addr(),
        "POST",
        &format!("{P}/svc"),
        &[
            ("X-Myrpc-Server", "tcp@a:1"),
            ("X-Myrpc-Weight", "5"),
            ("X-Myrpc-Meta", "zone=eu&v=2"),
            ("X-Myrpc-Ttl", "10s"),
        ],
    );
    assert_eq!(r.status, 200);
    let r = raw(s.local_addr(), "GET", &format!("{P}/svc?format=json"), &[]);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert!(r.header("X-Myrpc-Servers").is_none());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["service"], "svc");
    assert_eq!(v["servers"][0]["addr"], "tcp@a:1");
    assert_eq!(v["servers"][0]["weight"], 5);
    assert_eq!(v["servers"][0]["meta"]["zone"], "eu");
    let left = v["servers"][0]["expires_in_ms"].as_u64().unwrap();
    assert!(left > 5_000 && left <= 10_000, "{left}");
    let by_accept = raw(
        s.local_addr(),
        "GET",
        &format!("{P}/svc"),
        &[("Accept", "application/json")],
    );
    assert_eq!(by_accept.header("Content-Type"), Some("application/json"));
}
