//! The library's clients against a hostile or broken registry: a real
//! registry behind a fault-injecting proxy (`common::proxy`) that stalls,
//! drips, cuts answers short, answers garbage or refuses.

use std::time::{Duration, Instant};

use regcenter::{Discovery, Error, Heartbeat, HeartbeatBuilder, RegistryDiscovery, SelectMode};

use crate::common::proxy::{Fault, Proxy};
use crate::common::{lasting_registry, wait_until};

const ADDR: &str = "tcp@127.0.0.1:7001";
/// The timeout every client here is given.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Generous upper bound for any one call with `TIMEOUT`.
const BOUND: Duration = Duration::from_secs(10);
const WITHIN: Duration = Duration::from_secs(15);

/// The faults that are neither an answer nor a refusal.
fn garbage() -> Vec<Fault> {
    vec![
        Fault::Stall,
        Fault::Drip(Duration::from_millis(20)),
        Fault::CloseMidAnswer,
        Fault::NotHttp,
        Fault::NoColon,
        Fault::HugeHeader,
        Fault::RedirectToSelf,
    ]
}

/// Runs `f`, asserting it returns within [`BOUND`].
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    assert!(
        t.elapsed() < BOUND,
        "{what} took {:?} with a {TIMEOUT:?} timeout",
        t.elapsed()
    );
    out
}

fn heartbeat(registry_url: &str) -> HeartbeatBuilder {
    Heartbeat::builder(registry_url, ADDR)
        .period(Duration::from_millis(100))
        .timeout(TIMEOUT)
}

/// A heartbeat through the proxy meets `fault` at least twice, keeps
/// running, and registers the server again once the proxy heals.
fn heartbeat_survives(fault: Fault) {
    let s = lasting_registry();
    let proxy = Proxy::start(s.local_addr());
    let hb = heartbeat(&proxy.url()).start().unwrap();
    assert_eq!(s.registry().alive(""), [ADDR]);
    proxy.set(fault.clone());
    wait_until(
        &format!("the heartbeat to meet {fault:?} twice"),
        WITHIN,
        || proxy.hits() >= 2 || !hb.is_running(),
    );
    assert!(
        hb.is_running(),
        "{fault:?} ended the heartbeat: {:?}",
        hb.stopped_reason()
    );
    assert_eq!(hb.stopped_reason(), None);
    proxy.set(Fault::Pass);
    let before = hb.beats();
    s.registry().remove("", ADDR).unwrap();
    wait_until(
        &format!("the heartbeat to register again after {fault:?}"),
        WITHIN,
        || hb.beats() > before && s.registry().alive("") == [ADDR],
    );
    bounded("stop", || hb.stop()).unwrap();
    assert!(s.registry().alive("").is_empty(), "deregistered on stop");
}

#[test]
fn a_heartbeat_survives_a_registry_that_stalls() {
    heartbeat_survives(Fault::Stall);
}

#[test]
fn a_heartbeat_survives_an_answer_dripped_a_byte_at_a_time() {
    heartbeat_survives(Fault::Drip(Duration::from_millis(20)));
}

#[test]
fn a_heartbeat_survives_an_answer_cut_mid_way() {
    heartbeat_survives(Fault::CloseMidAnswer);
}

#[test]
fn a_heartbeat_survives_an_answer_that_is_not_http() {
    heartbeat_survives(Fault::NotHttp);
}

#[test]
fn a_heartbeat_survives_a_header_line_without_a_colon() {
    heartbeat_survives(Fault::NoColon);
}

#[test]
fn a_heartbeat_survives_an_oversized_header() {
    heartbeat_survives(Fault::HugeHeader);
}

#[test]
fn a_heartbeat_survives_a_redirect_to_itself() {
    heartbeat_survives(Fault::RedirectToSelf);
}

#[test]
fn a_heartbeat_retries_every_status_but_an_explicit_refusal() {
    for fault in [
        Fault::Reply(500, "internal error"),
        Fault::Reply(502, ""),
        Fault::Reply(503, "try again"),
        Fault::Reply(429, "slow down"),
        Fault::Reply(404, ""),
        Fault::Reply(405, "method not allowed"),
        Fault::Reply(302, ""),
        Fault::Reply(418, "teapot"),
    ] {
        heartbeat_survives(fault);
    }
}

#[test]
fn a_heartbeat_refused_for_good_stops_and_says_why() {
    for (status, reason) in [
        (401, "missing or wrong bearer token"),
        (400, "invalid X-Myrpc-Weight"),
        (403, "forbidden"),
        (404, "no registry at /elsewhere"),
    ] {
        let s = lasting_registry();
        let proxy = Proxy::start(s.local_addr());
        let hb = heartbeat(&proxy.url()).start().unwrap();
        assert_eq!(hb.wait_stopped(Duration::from_millis(1)), None);
        proxy.set(Fault::Reply(status, reason));
        let why = hb
            .wait_stopped(WITHIN)
            .unwrap_or_else(|| panic!("a {status} did not end the heartbeat"));
        assert!(!hb.is_running());
        assert_eq!(hb.stopped_reason().as_ref(), Some(&why));
        assert!(
            why.contains(&proxy.url()) && why.contains(&format!("{status}: {reason}")),
            "{why}"
        );
        let e = bounded("stop", || hb.stop()).unwrap_err();
        assert!(
            matches!(&e, Error::Status { status: s, reason: r, .. } if *s == status && r == reason),
            "{e}"
        );
    }
}

#[test]
fn a_refusal_at_one_registry_still_deregisters_from_the_others_on_stop() {
    let a = lasting_registry();
    let b = lasting_registry();
    let proxy = Proxy::start(a.local_addr());
    let hb = heartbeat(&proxy.url()).also(b.url()).start().unwrap();
    assert_eq!(a.registry().alive(""), [ADDR]);
    assert_eq!(b.registry().alive(""), [ADDR]);
    proxy.set(Fault::Reply(401, "missing or wrong bearer token"));
    let why = hb
        .wait_stopped(WITHIN)
        .expect("the 401 ends the first registry's beats");
    assert!(why.contains("401"), "{why}");
    let e = bounded("stop", || hb.stop()).unwrap_err();
    assert!(matches!(e, Error::Status { status: 401, .. }), "{e}");
    assert!(
        b.registry().alive("").is_empty(),
        "stop left the server registered at the registry that still accepted it"
    );
}

#[test]
fn no_client_call_outlives_its_timeouts_whatever_the_registry_answers() {
    let s = lasting_registry();
    s.registry().put("", "tcp@listed:1").unwrap();
    let proxy = Proxy::start(s.local_addr());
    let url = proxy.url();
    // Discoveries that fetched a list before the registry went bad.
    let warm = RegistryDiscovery::builder(&url)
        .timeout(TIMEOUT)
        .refresh_period(Duration::from_millis(1))
        .build()
        .unwrap();
    let watching = RegistryDiscovery::builder(&url)
        .timeout(TIMEOUT)
        .refresh_period(Duration::from_millis(1))
        .watch(true)
        .watch_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(warm.get_all().unwrap(), ["tcp@listed:1"]);
    wait_until("the watcher's first list", WITHIN, || {
        watching.index().is_some()
    });
    for fault in garbage() {
        proxy.set(fault.clone());
        let what = |call: &str| format!("{call} through {fault:?}");

        // A heartbeat started against it runs and retries in the background.
        let hb = bounded(&what("HeartbeatBuilder::start"), || heartbeat(&url).start());
        let hb = hb.unwrap_or_else(|e| panic!("{}: {e}", what("HeartbeatBuilder::start")));
        assert!(hb.is_running(), "{}", what("HeartbeatBuilder::start"));
        if let Err(e) = bounded(&what("Heartbeat::stop"), || hb.stop()) {
            assert!(!matches!(e, Error::Stopped { .. }), "{e}");
        }
        let _ = bounded(&what("deregister"), || {
            regcenter::deregister(&url, "", ADDR, None)
        });

        // A fresh discovery has nothing to serve: an error, in time.
        for watch in [false, true] {
            let d = RegistryDiscovery::builder(&url)
                .timeout(TIMEOUT)
                .watch(watch)
                .watch_wait(Duration::from_secs(1))
                .build()
                .unwrap();
            let call = |c: &str| what(&format!("{c} (fresh, watch {watch})"));
            let _ = bounded(&call("get"), || d.get(SelectMode::Random));
            let _ = bounded(&call("refresh"), || d.refresh());
            let _ = bounded(&call("get_all"), || d.get_all());
            bounded(&call("stop"), || d.stop()).unwrap();
        }

        // One that had a list keeps serving it.
        for d in [&warm, &watching] {
            let got = bounded(&what("get"), || d.get(SelectMode::Random));
            assert_eq!(got.unwrap(), "tcp@listed:1", "{}", what("get"));
            assert!(bounded(&what("refresh"), || d.refresh()).is_err());
            let all = bounded(&what("get_all"), || d.get_all());
            assert_eq!(all.unwrap(), ["tcp@listed:1"], "{}", what("get_all"));
        }
    }
    proxy.set(Fault::Stall);
    bounded("stopping a watcher whose registry stalls", || {
        watching.stop()
    })
    .unwrap();
}
