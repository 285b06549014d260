//! Typed instances, filters, preference and failure feedback, against a
//! real registry and against the JSON stand-in (for what the registry
//! sends only from protocol v1.1: status).

use std::collections::HashSet;
use std::time::Duration;

use regcenter::{
    Discovery, PutOptions, RegistryDiscovery, RegistryDiscoveryBuilder, RegistryServer, SelectMode,
    Status, hash_key,
};

use crate::common::wait_until;
use crate::json_standin::{JsonRegistry, listing, up};

const MODES: [SelectMode; 4] = [
    SelectMode::Random,
    SelectMode::RoundRobin,
    SelectMode::WeightedRoundRobin,
    SelectMode::ConsistentHash(1),
];

/// What 100 picks of `mode` (the hash mode with varied keys) chose, through
/// `get` and `get_instance` alike.
fn picked(d: &RegistryDiscovery, mode: SelectMode) -> HashSet<String> {
    let mut seen = HashSet::new();
    for k in 0..100u64 {
        let mode = match mode {
            SelectMode::ConsistentHash(_) => SelectMode::ConsistentHash(hash_key(&k.to_string())),
            m => m,
        };
        seen.insert(d.get(mode).unwrap());
        seen.insert(d.get_instance(mode).unwrap().addr().to_string());
    }
    seen
}

fn set(addrs: &[&str]) -> HashSet<String> {
    addrs.iter().map(|a| a.to_string()).collect()
}

fn long(opts: PutOptions) -> PutOptions {
    opts.ttl(Duration::from_secs(60))
}

/// A registry with `addrs` in the default service, and a discovery of it,
/// set up by `configure`, that has listed them once and fetches again only
/// when a test refreshes it.
fn listed_once(
    addrs: &[&str],
    configure: impl FnOnce(RegistryDiscoveryBuilder) -> RegistryDiscoveryBuilder,
) -> (RegistryServer, RegistryDiscovery) {
    let s = RegistryServer::start_local().unwrap();
    for a in addrs {
        crate::common::put_for_a_minute(s.registry(), "", a);
    }
    let d = configure(RegistryDiscovery::builder(s.url()))
        .refresh_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    d.get_all().unwrap();
    (s, d)
}

#[test]
fn instances_carry_the_registry_attributes() {
    // Free-form, to list an address of no protocol.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .free_form_addresses(true)
        .start()
        .unwrap();
    let opts = long(
        PutOptions::new()
            .weight(4)
            .meta("zone", "eu")
            .meta("v", "2"),
    );
    s.registry()
        .put_with("arith", "tcp@127.0.0.1:7001", &opts)
        .unwrap();
    s.registry().put("arith", "plain-name").unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .service("arith")
        .build()
        .unwrap();
    let list = d.instances().unwrap();
    assert_eq!(list.len(), 2);
    let (plain, tcp) = (&list[0], &list[1]);
    assert_eq!(tcp.addr(), "tcp@127.0.0.1:7001");
    assert_eq!(tcp.protocol(), Some("tcp"));
    assert_eq!(tcp.socket_addr(), Some("127.0.0.1:7001"));
    assert_eq!(tcp.weight(), 4);
    let meta: Vec<(&str, &str)> = tcp
        .meta()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(meta, [("v", "2"), ("zone", "eu")]);
    assert_eq!(tcp.status(), Status::Up);
    let left = tcp.expires_in().expect("a TTL");
    assert!(
        left <= Duration::from_secs(60) && left > Duration::from_secs(30),
        "{left:?}"
    );
    assert!(!tcp.is_ejected());
    assert_eq!(
        (plain.addr(), plain.protocol(), plain.socket_addr()),
        ("plain-name", None, None)
    );
    assert_eq!((plain.weight(), plain.meta().len()), (1, 0));
}

#[test]
fn draining_instances_are_listed_but_never_picked() {
    let draining = r#"{"addr":"tcp@a:1","weight":2,"meta":{"zone":"eu"},"status":"draining","expires_in_ms":900}"#;
    // An older registry's entry: no status, no weight, no meta, no expiry.
    let bare = r#"{"addr":"tcp@b:1"}"#;
    let future = r#"{"addr":"tcp@c:1","status":"sleeping","expires_in_ms":null}"#;
    let reg = JsonRegistry::start(listing(7, &[draining, bare, future, &up("tcp@d:1")]));
    let d = RegistryDiscovery::new(&reg.url()).unwrap();
    let list = d.instances().unwrap();
    let seen: Vec<(&str, u32, Status, Option<Duration>)> = list
        .iter()
        .map(|i| (i.addr(), i.weight(), i.status(), i.expires_in()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "tcp@a:1",
                2,
                Status::Draining,
                Some(Duration::from_millis(900))
            ),
            ("tcp@b:1", 1, Status::Up, None),
            ("tcp@c:1", 1, Status::Draining, None),
            ("tcp@d:1", 1, Status::Up, Some(Duration::from_secs(5))),
        ]
    );
    assert_eq!(list[0].meta().get("zone").map(String::as_str), Some("eu"));
    assert_eq!(d.get_all().unwrap(), ["tcp@b:1", "tcp@d:1"]);
    for mode in MODES {
        assert_eq!(picked(&d, mode), set(&["tcp@b:1", "tcp@d:1"]), "{mode:?}");
    }
    // Nothing up at all: no servers, not a draining one.
    reg.set(listing(8, &[draining]));
    d.refresh().unwrap();
    let e = d.get(SelectMode::Random).unwrap_err();
    assert!(matches!(e, regcenter::Error::NoServers { .. }), "{e}");
    assert_eq!(d.instances().unwrap().len(), 1);
}

#[test]
fn a_filter_keeps_only_the_matching_instances_of_a_real_registry() {
    let s = RegistryServer::start_local().unwrap();
    let reg = s.registry();
    reg.put_with(
        "svc",
        "tcp@eu1:1",
        &long(PutOptions::new().meta("zone", "eu").meta("tier", "a b")),
    )
    .unwrap();
    reg.put_with(
        "svc",
        "tcp@eu2:1",
        &long(PutOptions::new().meta("zone", "eu")),
    )
    .unwrap();
    reg.put_with(
        "svc",
        "tcp@us1:1",
        &long(PutOptions::new().meta("zone", "us")),
    )
    .unwrap();
    let d = RegistryDiscovery::builder(s.url())
        .service("svc")
        .filter("zone", "eu")
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@eu1:1", "tcp@eu2:1"]);
    assert_eq!(d.instances().unwrap().len(), 2);
    let both = RegistryDiscovery::builder(s.url())
        .service("svc")
        .filter("zone", "eu")
        .filter("tier", "a b")
        .build()
        .unwrap();
    assert_eq!(both.get_all().unwrap(), ["tcp@eu1:1"]);
    for mode in MODES {
        assert_eq!(picked(&both, mode), set(&["tcp@eu1:1"]), "{mode:?}");
    }
}

#[test]
fn filters_go_to_the_registry_percent_encoded_and_apply_to_what_comes_back() {
    let eu = r#"{"addr":"tcp@eu:1","meta":{"zone":"eu west","k&=":"v"}}"#;
    let us = r#"{"addr":"tcp@us:1","meta":{"zone":"us"}}"#;
    // The stand-in ignores the filter, as an older registry does.
    let reg = JsonRegistry::start(listing(3, &[eu, us]));
    let d = RegistryDiscovery::builder(&reg.url())
        .filter("zone", "eu west")
        .filter("k&=", "v")
        .watch(true)
        .watch_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@eu:1"]);
    let wanted = "meta.zone=eu%20west&meta.k%26%3D=v";
    wait_until("a filtered long-poll", Duration::from_secs(5), || {
        reg.requests()
            .iter()
            .any(|r| r.contains("index=") && r.contains(wanted))
    });
    let requests = reg.requests();
    assert!(
        requests.iter().all(|r| r.contains(wanted)),
        "every request carries the filter: {requests:?}"
    );
    d.stop().unwrap();
}

#[test]
fn a_filter_with_an_empty_key_fails_at_build() {
    let e = RegistryDiscovery::builder("http://127.0.0.1:1/p")
        .filter("", "x")
        .build()
        .unwrap_err();
    assert!(matches!(e, regcenter::Error::InvalidConfig { .. }), "{e}");
}

#[test]
fn preference_picks_the_local_zone_and_falls_back_without_a_fetch() {
    let s = RegistryServer::start_local().unwrap();
    let reg = s.registry();
    for (a, zone) in [
        ("tcp@eu1:1", "eu"),
        ("tcp@us1:1", "us"),
        ("tcp@us2:1", "us"),
        ("tcp@us3:1", "us"),
    ] {
        reg.put_with("svc", a, &long(PutOptions::new().meta("zone", zone)))
            .unwrap();
    }
    let d = RegistryDiscovery::builder(s.url())
        .service("svc")
        .prefer("zone", "eu")
        .refresh_period(Duration::from_secs(3600))
        .build()
        .unwrap();
    for mode in MODES {
        assert_eq!(picked(&d, mode), set(&["tcp@eu1:1"]), "{mode:?}");
    }
    let index = d.index();
    for _ in 0..3 {
        d.report_failure("tcp@eu1:1");
    }
    for mode in MODES {
        assert_eq!(
            picked(&d, mode),
            set(&["tcp@us1:1", "tcp@us2:1", "tcp@us3:1"]),
            "{mode:?}"
        );
    }
    d.report_success("tcp@eu1:1");
    assert_eq!(picked(&d, SelectMode::Random), set(&["tcp@eu1:1"]));
    assert_eq!(d.index(), index, "no fetch in between");
}

#[test]
fn reported_failures_eject_an_instance_for_about_a_second() {
    let (_s, d) = listed_once(&["tcp@a:1", "tcp@b:1", "tcp@c:1"], |b| b);
    d.report_failure("tcp@b:1");
    d.report_failure("tcp@b:1");
    assert!(
        !d.instances().unwrap()[1].is_ejected(),
        "two failures are not enough"
    );
    let t = std::time::Instant::now();
    d.report_failure("tcp@b:1");
    assert!(d.instances().unwrap()[1].is_ejected());
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@c:1"]);
    for mode in MODES {
        assert!(!picked(&d, mode).contains("tcp@b:1"), "{mode:?}");
    }
    // Never more than half: c cannot be ejected while b is.
    for _ in 0..5 {
        d.report_failure("tcp@c:1");
    }
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@c:1"]);
    wait_until("b to come back", Duration::from_secs(5), || {
        d.get_all().unwrap().len() == 3
    });
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "back after {:?}",
        t.elapsed()
    );
}

#[test]
fn a_configured_threshold_ejects_after_that_many_failures() {
    let (s, d) = listed_once(&["tcp@a:1", "tcp@b:1"], |b| b.eject_after(1));
    d.report_failure("tcp@a:1");
    assert_eq!(d.get_all().unwrap(), ["tcp@b:1"]);
    let off = RegistryDiscovery::builder(s.url())
        .eject_after(0)
        .build()
        .unwrap();
    for _ in 0..10 {
        off.report_failure("tcp@a:1");
    }
    assert_eq!(off.get_all().unwrap().len(), 2, "0 turns ejection off");
}

#[test]
fn an_instance_that_registers_again_is_no_longer_ejected() {
    let (s, d) = listed_once(&["tcp@a:1", "tcp@b:1", "tcp@c:1"], |b| b);
    for _ in 0..3 {
        d.report_failure("tcp@b:1");
    }
    d.refresh().unwrap();
    assert!(
        d.instances().unwrap()[1].is_ejected(),
        "a refresh keeps it out"
    );
    // Restarted with other metadata: a new registration.
    let opts = long(PutOptions::new().meta("boot", "2"));
    s.registry().put_with("", "tcp@b:1", &opts).unwrap();
    d.refresh().unwrap();
    assert!(!d.instances().unwrap()[1].is_ejected());
    assert_eq!(d.get_all().unwrap().len(), 3);
}

#[test]
fn instances_can_be_sent_and_shared_between_threads() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<regcenter::Instance>();
}
