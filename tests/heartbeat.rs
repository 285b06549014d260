//! Heartbeats against a real registry over loopback.

use std::time::Duration;

use regcenter::{Error, Heartbeat, RegistryServer};

use crate::common::{SeedRegistry, wait_until};

const SECS: Duration = Duration::from_secs(5);

/// A registry with a 300 ms TTL, so heartbeats beat every 100 ms.
fn registry_on(addr: &str) -> RegistryServer {
    RegistryServer::builder()
        .addr(addr)
        .ttl(Duration::from_millis(300))
        .min_ttl(Duration::from_millis(50))
        .threads(2)
        .start()
        .unwrap()
}

#[test]
fn registers_before_start_returns_renews_and_deregisters_on_stop() {
    let s = registry_on("127.0.0.1:0");
    let hb = Heartbeat::builder(s.url(), "tcp@127.0.0.1:7001")
        .start()
        .unwrap();
    assert_eq!(
        s.registry().alive(""),
        ["tcp@127.0.0.1:7001"],
        "first beat before returning"
    );
    // Renewals keep it alive across several TTLs.
    wait_until("5 beats", SECS, || hb.beats() >= 5);
    assert_eq!(s.registry().alive(""), ["tcp@127.0.0.1:7001"]);
    hb.stop().unwrap();
    assert!(
        s.registry().alive("").is_empty(),
        "stop deregisters at once"
    );
}

#[test]
fn stop_is_immediate_even_with_a_long_period() {
    let s = registry_on("127.0.0.1:0");
    let hb = Heartbeat::builder(s.url(), "tcp@x:1")
        .period(Duration::from_secs(3600))
        .service("arith")
        .start()
        .unwrap();
    assert_eq!(s.registry().alive("arith"), ["tcp@x:1"]);
    let t = std::time::Instant::now();
    drop(hb);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(s.registry().alive("arith").is_empty());
}

#[test]
fn a_permanent_error_is_returned_by_start() {
    let s = registry_on("127.0.0.1:0");
    let bad_path = format!("http://{}/elsewhere", s.local_addr());
    let e = Heartbeat::builder(&bad_path, "tcp@x:1")
        .start()
        .unwrap_err();
    assert!(matches!(e, Error::Status { status: 404, .. }), "{e}");
}

#[test]
fn starting_while_the_registry_is_down_registers_once_it_is_up() {
    let probe = registry_on("127.0.0.1:0");
    let addr = probe.local_addr().to_string();
    let url = probe.url().to_string();
    probe.shutdown().unwrap();

    let hb = Heartbeat::builder(&url, "tcp@late:1").start().unwrap();
    assert_eq!(hb.beats(), 0);
    let s = registry_on(&addr);
    // Backoff is capped at the period (100 ms): listed well within a second.
    wait_until("the heartbeat to register", Duration::from_secs(2), || {
        s.registry().alive("") == ["tcp@late:1"]
    });
    hb.stop().unwrap();
}

#[test]
fn a_restarted_registry_gets_the_server_back_within_a_period() {
    let s = registry_on("127.0.0.1:0");
    let addr = s.local_addr().to_string();
    let hb = Heartbeat::builder(s.url(), "tcp@again:1").start().unwrap();
    s.shutdown().unwrap();
    let restarted = registry_on(&addr);
    assert!(restarted.registry().is_empty());
    let t = std::time::Instant::now();
    wait_until(
        "the heartbeat to register again",
        Duration::from_secs(2),
        || restarted.registry().alive("") == ["tcp@again:1"],
    );
    // One period is 100 ms; allow scheduling slack but not a client timeout.
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    hb.stop().unwrap();
}

#[test]
fn works_against_the_go_seed_which_has_no_delete() {
    let seed = SeedRegistry::start();
    let hb = Heartbeat::builder(&seed.url(), "tcp@127.0.0.1:7001")
        .start()
        .unwrap();
    assert!(seed.servers.lock().contains_key("tcp@127.0.0.1:7001"));
    hb.stop().expect("a 405 on DELETE still counts as stopped");
    assert!(seed.requests.lock().iter().any(|r| r.starts_with("DELETE")));
}

#[test]
fn stop_reports_an_unreachable_registry_but_still_returns() {
    let s = registry_on("127.0.0.1:0");
    let hb = Heartbeat::builder(s.url(), "tcp@x:1")
        .timeout(Duration::from_millis(500))
        .start()
        .unwrap();
    s.shutdown().unwrap();
    let e = hb.stop().unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
}

#[test]
fn beats_every_registry_given_and_deregisters_from_all() {
    let a = registry_on("127.0.0.1:0");
    let b = registry_on("127.0.0.1:0");
    let hb = Heartbeat::builder(a.url(), "tcp@both:1")
        .also(b.url())
        .start()
        .unwrap();
    assert_eq!(a.registry().alive(""), ["tcp@both:1"]);
    assert_eq!(b.registry().alive(""), ["tcp@both:1"]);
    wait_until("renewals at both", SECS, || hb.beats() >= 6);
    assert_eq!(
        b.registry().alive(""),
        ["tcp@both:1"],
        "b kept it past its TTL"
    );
    hb.stop().unwrap();
    assert!(a.registry().is_empty() && b.registry().is_empty());
}
