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
