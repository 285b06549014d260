//! Heartbeats against a real registry over loopback.

use std::time::{Duration, Instant};

use regcenter::{Error, Heartbeat, HeartbeatState};

use crate::common::proxy::{Fault, Proxy};
use crate::common::{SeedRegistry, registry_on, wait_until};

const SECS: Duration = Duration::from_secs(5);

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

/// When the heartbeat's current good run started; panics in any other state.
fn registered_since(hb: &Heartbeat) -> Instant {
    match hb.state() {
        HeartbeatState::Registered { since } => since,
        other => panic!("expected Registered, got {other:?}"),
    }
}

/// When the heartbeat's current outage started, and its last error.
fn retrying(hb: &Heartbeat) -> Option<(Instant, String)> {
    match hb.state() {
        HeartbeatState::Retrying { since, last_error } => Some((since, last_error)),
        _ => None,
    }
}

#[test]
fn state_follows_a_registry_that_goes_away_and_comes_back() {
    let s = registry_on("127.0.0.1:0");
    let proxy = Proxy::start(s.local_addr());
    let before = Instant::now();
    let hb = Heartbeat::builder(&proxy.url(), "tcp@state:1")
        .timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    let up = registered_since(&hb);
    assert!(up >= before && up <= Instant::now(), "since the first beat");
    wait_until("renewals", SECS, || hb.beats() >= 4);
    assert_eq!(registered_since(&hb), up, "renewals do not restart the run");

    proxy.set(Fault::Stall);
    wait_until("the outage to show", SECS, || retrying(&hb).is_some());
    let (down, error) = retrying(&hb).unwrap();
    assert!(down > up, "the outage starts after the good run");
    assert!(error.contains(&proxy.url()), "names the registry: {error}");
    // More failed beats keep the start of the outage.
    wait_until("more failed beats", SECS, || proxy.hits() >= 3);
    assert_eq!(retrying(&hb).unwrap().0, down);
    assert!(hb.is_running(), "an outage does not stop the heartbeat");

    proxy.set(Fault::Pass);
    wait_until(
        "the heartbeat to register again",
        SECS,
        || matches!(hb.state(), HeartbeatState::Registered { since } if since > down),
    );
    hb.stop().unwrap();
}

#[test]
fn state_is_retrying_from_start_when_the_registry_is_down() {
    let s = registry_on("127.0.0.1:0");
    let proxy = Proxy::start(s.local_addr());
    proxy.set(Fault::Reply(503, "restarting\n"));
    let before = Instant::now();
    let hb = Heartbeat::builder(&proxy.url(), "tcp@late:2")
        .start()
        .unwrap();
    let (since, error) = retrying(&hb).expect("no beat acknowledged yet");
    assert!(since >= before, "since the first failed beat");
    assert!(error.contains("503"), "{error}");
    proxy.set(Fault::Pass);
    wait_until(
        "the first acknowledged beat",
        SECS,
        || matches!(hb.state(), HeartbeatState::Registered { since: up } if up > since),
    );
    hb.stop().unwrap();
}

#[test]
fn state_stays_registered_while_any_registry_acknowledges() {
    let a = registry_on("127.0.0.1:0");
    let b = registry_on("127.0.0.1:0");
    let (pa, pb) = (Proxy::start(a.local_addr()), Proxy::start(b.local_addr()));
    let hb = Heartbeat::builder(&pa.url(), "tcp@two:1")
        .also(&pb.url())
        .timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    let up = registered_since(&hb);

    pb.set(Fault::Stall);
    // A second connection through b means a beat there has failed.
    wait_until("failed beats at b", SECS, || pb.hits() >= 2);
    let renewed = hb.beats();
    wait_until("renewals at a", SECS, || hb.beats() >= renewed + 2);
    assert_eq!(registered_since(&hb), up, "a still acknowledges");

    pa.set(Fault::Stall);
    wait_until("the outage at both", SECS, || retrying(&hb).is_some());
    let (down, _) = retrying(&hb).unwrap();
    assert!(down > up);

    pb.set(Fault::Pass);
    wait_until(
        "b to acknowledge again",
        SECS,
        || matches!(hb.state(), HeartbeatState::Registered { since } if since > down),
    );
    pa.set(Fault::Pass);
    hb.stop().unwrap();
}

#[test]
fn state_is_stopped_with_the_reason_once_every_registry_refuses() {
    let a = registry_on("127.0.0.1:0");
    let b = registry_on("127.0.0.1:0");
    let (pa, pb) = (Proxy::start(a.local_addr()), Proxy::start(b.local_addr()));
    let hb = Heartbeat::builder(&pa.url(), "tcp@refused:1")
        .also(&pb.url())
        .start()
        .unwrap();
    let up = registered_since(&hb);

    pa.set(Fault::Reply(401, "missing or wrong bearer token\n"));
    wait_until("a to refuse", SECS, || !hb.is_running());
    // b still beats: the state says so, while is_running says one ended.
    let renewed = hb.beats();
    wait_until("renewals at b", SECS, || hb.beats() >= renewed + 2);
    assert_eq!(registered_since(&hb), up);

    pb.set(Fault::Reply(403, "forbidden\n"));
    wait_until("every registry to refuse", SECS, || {
        matches!(hb.state(), HeartbeatState::Stopped { .. })
    });
    let HeartbeatState::Stopped { reason } = hb.state() else {
        unreachable!("matched above")
    };
    assert!(
        reason.contains("401") && reason.contains(&pa.url()),
        "the first refusal: {reason}"
    );
    assert_eq!(Some(reason), hb.stopped_reason());
    assert!(hb.stop().is_err());
}

#[test]
fn heartbeat_state_is_send_sync_and_cloneable() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<HeartbeatState>();
}
