//! Discovery against a real registry and against the seed stand-in.

use std::time::Duration;

use regcenter::{Discovery, Error, RegistryDiscovery, RegistryServer, SelectMode};

use crate::common::SeedRegistry;

#[test]
fn discovers_alive_servers_and_picks_in_turn() {
    let s = RegistryServer::start_local().unwrap();
    for a in ["tcp@a:1", "tcp@b:1", "tcp@c:1"] {
        s.registry().put("arith", a).unwrap();
    }
    let d = RegistryDiscovery::builder(s.url())
        .service("arith")
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1", "tcp@c:1"]);
    let mut picks: Vec<String> = (0..3)
        .map(|_| d.get(SelectMode::RoundRobin).unwrap())
        .collect();
    picks.sort();
    assert_eq!(picks, ["tcp@a:1", "tcp@b:1", "tcp@c:1"]);
}

#[test]
fn refreshes_after_the_period() {
    let s = RegistryServer::start_local().unwrap();
    s.registry().put("", "tcp@a:1").unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_millis(50))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    s.registry().put("", "tcp@b:1").unwrap();
    crate::common::wait_until("the new server to be seen", Duration::from_secs(2), || {
        d.get_all().unwrap().len() == 2
    });
    // An explicit refresh fetches at once, whatever the period.
    let slow = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert_eq!(slow.get_all().unwrap().len(), 2);
    s.registry().put("", "tcp@c:1").unwrap();
    assert_eq!(slow.get_all().unwrap().len(), 2, "not due yet");
    slow.refresh().unwrap();
    assert_eq!(slow.get_all().unwrap().len(), 3);
}

#[test]
fn an_empty_registry_gives_a_clear_error() {
    let s = RegistryServer::start_local().unwrap();
    let d = RegistryDiscovery::new(s.url()).unwrap();
    let e = d.get(SelectMode::Random).unwrap_err();
    assert!(matches!(e, Error::NoServers { .. }), "{e}");
    assert!(e.to_string().starts_with("no available servers"), "{e}");
}

#[test]
fn reads_the_seed_header_from_a_registry_that_speaks_only_the_seed_protocol() {
    let seed = SeedRegistry::start();
    for a in ["tcp@b:2", "tcp@a:1"] {
        seed.servers
            .lock()
            .insert(a.to_string(), std::time::Instant::now());
    }
    let d = RegistryDiscovery::new(&seed.url()).unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:2"]);
    assert!(d.get(SelectMode::Random).unwrap().starts_with("tcp@"));
}

#[test]
fn keeps_the_last_list_while_the_registry_is_down() {
    let s = RegistryServer::start_local().unwrap();
    s.registry().put("", "tcp@a:1").unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_millis(1))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert_eq!(d.get(SelectMode::Random).unwrap(), "tcp@a:1");
    s.shutdown().unwrap();
    for _ in 0..5 {
        assert_eq!(d.get(SelectMode::Random).unwrap(), "tcp@a:1");
    }
    assert!(
        d.refresh().is_err(),
        "an explicit refresh reports the outage"
    );
}

#[test]
fn never_fetched_and_unreachable_is_an_error() {
    let s = RegistryServer::start_local().unwrap();
    let url = s.url().to_string();
    s.shutdown().unwrap();
    let d = RegistryDiscovery::new(&url).unwrap();
    let e = d.get(SelectMode::Random).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
}

#[test]
fn every_pick_of_a_discovery_that_never_reached_its_registry_is_unreachable() {
    let s = RegistryServer::start_local().unwrap();
    let url = s.url().to_string();
    s.shutdown().unwrap();
    let d = RegistryDiscovery::builder(&url)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // The first call fails and schedules a retry; the calls before it is
    // due must not read as an empty registry.
    for call in 0..5 {
        let e = d.get(SelectMode::Random).unwrap_err();
        assert!(matches!(e, Error::Unreachable { .. }), "call {call}: {e}");
        let cause = std::error::Error::source(&e).expect("the transport error");
        assert!(!cause.to_string().is_empty(), "call {call}");
        let e = d.get_all().unwrap_err();
        assert!(matches!(e, Error::Unreachable { .. }), "call {call}: {e}");
    }
    // The same in watch mode, where the watching thread makes the attempts.
    let w = RegistryDiscovery::builder(&url)
        .timeout(Duration::from_millis(300))
        .watch(true)
        .build()
        .unwrap();
    for call in 0..5 {
        let e = w.get(SelectMode::RoundRobin).unwrap_err();
        assert!(
            matches!(e, Error::Unreachable { .. }),
            "watch call {call}: {e}"
        );
    }
}

#[test]
fn a_registry_url_without_a_scheme_fails_at_build() {
    for url in [
        "127.0.0.1:9999/myRPC/registry",
        "localhost:9999",
        "ftp://h/p",
        "",
    ] {
        let e = RegistryDiscovery::builder(url).build().unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{url}: {e}");
        assert!(e.to_string().contains("http://"), "{e}");
    }
    let e = RegistryDiscovery::builder("http://127.0.0.1:1/p")
        .also("127.0.0.1:2/p")
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");
    // (https:// needs the `tls` feature: tests/tls.rs.)
    for url in ["http://127.0.0.1:1/p", "HTTP://h/p"] {
        assert!(RegistryDiscovery::builder(url).build().is_ok(), "{url}");
    }
}

#[test]
fn age_in_watch_mode_is_reset_by_an_unchanged_long_poll_answer() {
    let s = registry_on("127.0.0.1:0");
    crate::common::put_for_a_minute(s.registry(), "", "tcp@a:1");
    let d = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_secs(3600))
        .watch(true)
        .watch_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    let first = std::time::Instant::now();
    // Nothing changes; the long-polls end unchanged every 200 ms, and each
    // one confirms the list.
    crate::common::wait_until(
        "an unchanged answer to confirm the list",
        Duration::from_secs(5),
        || {
            let confirmed = std::time::Instant::now() - d.age().unwrap();
            confirmed > first + Duration::from_millis(300)
        },
    );
    assert_eq!(d.index(), Some(s.registry().listing("").index()));
}

fn registry_on(addr: &str) -> RegistryServer {
    RegistryServer::builder()
        .addr(addr)
        .ttl(Duration::from_millis(600))
        .min_ttl(Duration::from_millis(50))
        .threads(2)
        .start()
        .unwrap()
}

/// A registry that, restarted, recovers within a second: its longest TTL.
fn restartable_on(addr: &str) -> RegistryServer {
    RegistryServer::builder()
        .addr(addr)
        .ttl(Duration::from_millis(600))
        .min_ttl(Duration::from_millis(50))
        .max_ttl(Duration::from_secs(1))
        .threads(2)
        .start()
        .unwrap()
}

#[test]
fn picks_up_the_new_list_when_the_registry_is_back() {
    let s = registry_on("127.0.0.1:0");
    let addr = s.local_addr().to_string();
    s.registry().put("", "tcp@old:1").unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_millis(20))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@old:1"]);
    s.shutdown().unwrap();
    assert_eq!(
        d.get(SelectMode::Random).unwrap(),
        "tcp@old:1",
        "stale on error"
    );
    // Back empty: the new server's list replaces the old one once the
    // registry has recovered (a second, its longest TTL).
    let back = restartable_on(&addr);
    let hb = regcenter::Heartbeat::builder(back.url(), "tcp@new:1")
        .start()
        .unwrap();
    crate::common::wait_until("the new list", Duration::from_secs(5), || {
        d.get_all().unwrap() == ["tcp@new:1"]
    });
    assert!(d.age().unwrap() < Duration::from_secs(1));
    hb.stop().unwrap();
}

#[test]
fn an_empty_restarted_registry_does_not_wipe_the_list_before_a_ttl() {
    use regcenter::Heartbeat;
    let s = restartable_on("127.0.0.1:0");
    let addr = s.local_addr().to_string();
    // Move the index well past what a fresh registry will report.
    for i in 0..20 {
        s.registry().put("", &format!("tcp@churn:1{i}")).unwrap();
        s.registry().remove("", &format!("tcp@churn:1{i}")).unwrap();
    }
    s.registry().put("", "tcp@kept:1").unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_millis(10))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@kept:1"]);
    s.shutdown().unwrap();
    let restarted = restartable_on(&addr);
    // The restarted registry answers empty with a smaller index: the list
    // is kept, not emptied.
    let t = std::time::Instant::now();
    crate::common::wait_until(
        "the discovery to see the restart",
        Duration::from_secs(2),
        || {
            d.get_all().unwrap();
            d.index().is_some_and(|i| i < 20)
        },
    );
    assert_eq!(
        d.get_all().unwrap(),
        ["tcp@kept:1"],
        "emptied {:?} after the restart",
        t.elapsed()
    );
    // A heartbeat refills the registry meanwhile: its server is served
    // beside the old list while the registry recovers, then alone.
    let hb = Heartbeat::builder(restarted.url(), "tcp@fresh:1")
        .start()
        .unwrap();
    crate::common::wait_until("the refilled list", Duration::from_secs(5), || {
        d.get_all().unwrap() == ["tcp@fresh:1"]
    });
    hb.stop().unwrap();
}

#[test]
fn the_guard_lets_an_empty_list_through_after_a_ttl() {
    let s = restartable_on("127.0.0.1:0");
    let addr = s.local_addr().to_string();
    for i in 0..20 {
        s.registry().put("", &format!("tcp@churn:1{i}")).unwrap();
        s.registry().remove("", &format!("tcp@churn:1{i}")).unwrap();
    }
    s.registry().put("", "tcp@gone:1").unwrap(); // TTL 600 ms
    let d = RegistryDiscovery::builder(s.url())
        .refresh_period(Duration::from_millis(10))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@gone:1"]);
    s.shutdown().unwrap();
    let _restarted = restartable_on(&addr);
    let t = std::time::Instant::now();
    crate::common::wait_until(
        "the empty list after one TTL",
        Duration::from_secs(5),
        || d.get_all().unwrap().is_empty(),
    );
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "emptied after {:?}",
        t.elapsed()
    );
}

#[test]
fn concurrent_callers_cause_a_single_refresh() {
    use std::sync::Arc;
    let seed = SeedRegistry::start();
    seed.servers
        .lock()
        .insert("tcp@a:1".into(), std::time::Instant::now());
    let d = Arc::new(
        RegistryDiscovery::builder(&seed.url())
            .refresh_period(Duration::from_millis(200))
            .build()
            .unwrap(),
    );
    d.get_all().unwrap();
    let before = seed.requests.lock().len();
    // Let the list expire, then call from 8 threads at once.
    crate::common::wait_until("the list to expire", Duration::from_secs(2), || {
        d.age().unwrap() > Duration::from_millis(250)
    });
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (d, barrier) = (d.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                d.get(SelectMode::Random).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "tcp@a:1");
    }
    assert_eq!(
        seed.requests.lock().len() - before,
        1,
        "{:?}",
        seed.requests.lock()
    );
}

#[test]
fn watch_mode_sees_changes_within_milliseconds_and_stops_at_once() {
    let s = registry_on("127.0.0.1:0");
    crate::common::put_for_a_minute(s.registry(), "svc", "tcp@a:1");
    let d = RegistryDiscovery::builder(s.url())
        .service("svc")
        .refresh_period(Duration::from_secs(3600))
        .watch(true)
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    crate::common::wait_until("the watch to be parked", Duration::from_secs(2), || {
        s.parked() == 1
    });
    let t = std::time::Instant::now();
    crate::common::put_for_a_minute(s.registry(), "svc", "tcp@b:1");
    crate::common::wait_until("the change to arrive", Duration::from_secs(2), || {
        d.get_all().unwrap().len() == 2
    });
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // An explicit refresh does not wait behind the parked long-poll.
    crate::common::wait_until(
        "the watch to be parked again",
        Duration::from_secs(2),
        || s.parked() == 1,
    );
    let t = std::time::Instant::now();
    d.refresh().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refresh took {:?}",
        t.elapsed()
    );
    let t = std::time::Instant::now();
    d.stop().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn falls_back_to_the_next_registry() {
    let down = registry_on("127.0.0.1:0");
    let down_url = down.url().to_string();
    down.shutdown().unwrap();
    let up = registry_on("127.0.0.1:0");
    up.registry().put("", "tcp@x:1").unwrap();
    let d = RegistryDiscovery::builder(&down_url)
        .also(up.url())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@x:1"]);
    assert!(d.url().starts_with(up.url()));
}

#[test]
fn weighted_round_robin_follows_the_registry_weights() {
    let s = registry_on("127.0.0.1:0");
    let opts = |w| {
        regcenter::PutOptions::new()
            .weight(w)
            .ttl(Duration::from_secs(60))
    };
    s.registry().put_with("", "tcp@heavy:1", &opts(3)).unwrap();
    s.registry().put_with("", "tcp@light:1", &opts(1)).unwrap();
    let d = RegistryDiscovery::new(s.url()).unwrap();
    let picks: Vec<String> = (0..8)
        .map(|_| d.get(SelectMode::WeightedRoundRobin).unwrap())
        .collect();
    assert_eq!(
        picks.iter().filter(|p| *p == "tcp@heavy:1").count(),
        6,
        "{picks:?}"
    );
}
