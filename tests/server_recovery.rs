//! A registry that started without restoring a snapshot says, until its
//! maximum TTL has passed, that it is recovering: servers may still be
//! re-registering, so its listings may be short.

use std::thread;
use std::time::Duration;

use regcenter::{ManualClock, RegistryServer};

use crate::common::{Raw, raw, temp_dir, wait_until};

const P: &str = "/myRPC/registry";
const SOON: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(30);

fn get(s: &RegistryServer, query: &str) -> Raw {
    let r = raw(s.local_addr(), "GET", &format!("{P}/svc{query}"), &[]);
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r
}

/// What every listing format says: the header of each, and JSON's field.
fn says(s: &RegistryServer) -> (Vec<Option<String>>, serde_json::Value) {
    let headers = [
        "",
        "?format=text",
        "?format=json",
        "?meta.zone=eu",
        "?meta.zone=eu&format=json",
        "?index=0&wait=0s",
    ]
    .iter()
    .map(|q| get(s, q).header("X-Myrpc-Recovering").map(str::to_string))
    .collect();
    let json: serde_json::Value = serde_json::from_slice(&get(s, "?format=json").body).unwrap();
    (headers, json["recovering"].clone())
}

fn recovering() -> (Vec<Option<String>>, serde_json::Value) {
    (
        vec![Some("true".to_string()); 6],
        serde_json::Value::Bool(true),
    )
}

fn recovered() -> (Vec<Option<String>>, serde_json::Value) {
    (vec![None; 6], serde_json::Value::Bool(false))
}

#[test]
fn a_registry_started_without_a_snapshot_recovers_for_its_max_ttl() {
    let clock = ManualClock::new();
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .max_ttl(MAX_TTL)
        .clock(clock.clone())
        .threads(2)
        .start()
        .unwrap();
    assert_eq!(says(&s), recovering());

    // A long-poll answered by a change says it too.
    let n: u64 = get(&s, "")
        .header("X-Myrpc-Index")
        .unwrap()
        .parse()
        .unwrap();
    let addr = s.local_addr();
    let path = format!("{P}/svc?index={n}&wait=30s");
    let w = thread::spawn(move || raw(addr, "GET", &path, &[]));
    wait_until("the long-poll to be parked", SOON, || s.parked() == 1);
    s.registry().put("svc", "tcp@a:1").unwrap();
    let r = w.join().unwrap();
    assert_eq!(r.header("X-Myrpc-Servers"), Some("tcp@a:1"));
    assert_eq!(r.header("X-Myrpc-Recovering"), Some("true"));

    clock.advance(MAX_TTL - Duration::from_millis(1));
    assert_eq!(says(&s), recovering());
    clock.advance(Duration::from_millis(1));
    assert_eq!(says(&s), recovered());
}

#[test]
fn a_registry_that_restored_its_snapshot_is_not_recovering() {
    let dir = temp_dir("recovery");
    let file = dir.join("table");
    let start = || {
        RegistryServer::builder()
            .addr("127.0.0.1:0")
            .max_ttl(MAX_TTL)
            .snapshot(&file)
            .threads(2)
            .start()
            .unwrap()
    };
    // A snapshot configured, but none found: it starts empty.
    let s = start();
    assert_eq!(says(&s), recovering());
    s.shutdown().unwrap();
    assert!(file.exists());
    // Restored, even with no entry in it: it knows its table.
    let s = start();
    assert_eq!(says(&s), recovered());
    s.shutdown().unwrap();
    // A damaged snapshot is set aside, and the registry starts empty.
    std::fs::write(&file, "not a snapshot\n").unwrap();
    let s = start();
    assert_eq!(says(&s), recovering());
    s.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn parked_long_polls_are_answered_when_recovery_ends() {
    // Clients keep the servers from before a restart beside the new list
    // while the registry recovers: a watcher must learn that recovery
    // ended when it ends, not at the end of its wait.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_millis(500))
        .min_ttl(Duration::from_millis(50))
        .max_ttl(Duration::from_secs(2))
        .threads(2)
        .start()
        .unwrap();
    let first = get(&s, "?format=json");
    assert_eq!(first.header("X-Myrpc-Recovering"), Some("true"));
    let index = first.header("X-Myrpc-Index").unwrap().to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(90)))
        .build()
        .into();
    let started = std::time::Instant::now();
    let mut r = agent
        .get(format!(
            "http://{}{P}/svc?format=json&index={index}&wait=60s",
            s.local_addr()
        ))
        .call()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered after {:?}, at the end of its wait",
        started.elapsed()
    );
    assert!(r.headers().get("X-Myrpc-Recovering").is_none());
    let json: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(json["recovering"], false);
}
