//! The etcd backend on a cluster of three members (Debian's etcd-server on
//! loopback), against the failures users of etcd-backed registries report:
//! outages longer than the TTL, restarts, compaction, a member without
//! quorum, watch streams that end, a paused leader, a killed member,
//! renewals that must not write, and an etcd too old for the gateway.

use std::time::{Duration, Instant};

use regcenter::{Discovery, EtcdRegistration, EtcdRegistrationBuilder, RegistryDiscovery};
use serde_json::json;

use crate::common::etcd::{Cluster, End, Gate, StandIn, b64, call};
use crate::common::proxy::{Fault, Proxy};
use crate::common::wait_until;

/// The TTL of every registration here, etcd's least, and the keep-alive
/// period it implies (a third of it).
const TTL: Duration = Duration::from_secs(2);
const PERIOD: Duration = Duration::from_millis(667);

fn registration(endpoints: &[String], service: &str, addr: &str) -> EtcdRegistrationBuilder {
    let e: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    EtcdRegistration::builder(&e, addr)
        .service(service)
        .ttl(TTL)
        .timeout(Duration::from_millis(500))
}

fn watching(endpoints: &[String], service: &str) -> RegistryDiscovery {
    let e: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    RegistryDiscovery::etcd(&e)
        .service(service)
        .watch(true)
        .refresh_period(Duration::from_secs(3600))
        .watch_wait(Duration::from_secs(20))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn keys(service: &str, addrs: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = addrs
        .iter()
        .map(|a| format!("/regcenter/{service}/{a}"))
        .collect();
    k.sort();
    k
}

#[test]
fn a_lease_that_expired_in_an_outage_is_granted_again_and_every_key_put_within_a_period() {
    let Some(c) = Cluster::start(3) else { return };
    // The registrations reach etcd through proxies only, so that the
    // outage is theirs: etcd runs on and expires their leases.
    let proxies: Vec<Proxy> = (0..3).map(|i| Proxy::start(c.member_addr(i))).collect();
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("http://{}", p.addr()))
        .collect();
    let addrs = ["tcp@out:1", "tcp@out:2", "tcp@out:3"];
    let want = keys("out", &addrs);
    let regs: Vec<EtcdRegistration> = addrs
        .iter()
        .map(|a| registration(&urls, "out", a).start().unwrap())
        .collect();
    let listed = || c.local_keys(0, "/regcenter/out/", Duration::from_secs(2));
    wait_until("the keys", Duration::from_secs(5), || {
        listed() == Some(want.clone())
    });
    for p in &proxies {
        p.set(Fault::Stall);
    }
    let t = Instant::now();
    wait_until(
        "the leases to expire in the outage",
        Duration::from_secs(15),
        || listed().is_some_and(|k| k.is_empty()),
    );
    let expired = t.elapsed();
    for p in &proxies {
        p.set(Fault::Pass);
    }
    let t = Instant::now();
    wait_until("every key to be put again", Duration::from_secs(15), || {
        listed() == Some(want.clone())
    });
    let back = t.elapsed();
    eprintln!("outage: leases gone after {expired:?}; every key back {back:?} after it ended");
    // One keep-alive period, and the grant and put that follow it.
    assert!(
        back < PERIOD + Duration::from_secs(1),
        "every key back only {back:?} after the outage (period {PERIOD:?})"
    );
    // Each is bound to a lease again: they go when it goes.
    for r in regs {
        r.stop().unwrap();
    }
    wait_until("the revokes", Duration::from_secs(5), || {
        listed().is_some_and(|k| k.is_empty())
    });
}

#[test]
fn keep_alive_never_gives_up_across_ten_restarts() {
    let Some(mut c) = Cluster::start(3) else {
        return;
    };
    let r = registration(&c.urls(), "ten", "tcp@ten:1").start().unwrap();
    let want = keys("ten", &["tcp@ten:1"]);
    let mut slowest = Duration::ZERO;
    for round in 1..=10 {
        let before = r.beats();
        // Every member stops, then starts on its data: keep-alives fail
        // while the cluster is down and elects a leader.
        c.restart(false);
        let t = Instant::now();
        wait_until(
            &format!("keep-alives after restart {round}"),
            Duration::from_secs(15),
            || {
                r.beats() > before
                    && c.local_keys(0, "/regcenter/ten/", Duration::from_secs(2))
                        == Some(want.clone())
            },
        );
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("ten restarts: keep-alives resumed at most {slowest:?} after etcd was healthy");
    r.stop().unwrap();
}

#[test]
fn a_watch_cancelled_by_compaction_lists_again_and_watches_again_once() {
    let Some(c) = Cluster::start(3) else { return };
    let gate = Gate::start(c.member_addr(0));
    // A call timeout longer than the gate holds the watch: the watch that
    // is let through is the one the discovery sent, not a retry.
    let d = RegistryDiscovery::etcd(&[&gate.url()])
        .service("cw")
        .watch(true)
        .refresh_period(Duration::from_secs(3600))
        .watch_wait(Duration::from_secs(20))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(d.get_all().unwrap().is_empty());
    // The watch from the revision listed waits at the gate while history
    // is written and compacted past that revision.
    wait_until("the first watch", Duration::from_secs(10), || {
        gate.held() == 1
    });
    let r = registration(&c.urls(), "cw", "tcp@compacted:1")
        .start()
        .unwrap();
    for i in 0..5 {
        call(
            &c.url(),
            "/v3/kv/put",
            &json!({ "key": b64(format!("/elsewhere/{i}").as_bytes()), "value": b64(b"x") }),
        )
        .unwrap();
    }
    c.compact(c.revision());
    let sent = gate.watches();
    let t = Instant::now();
    gate.open();
    wait_until(
        "the registration made before the compaction",
        Duration::from_secs(10),
        || d.get_all().unwrap() == ["tcp@compacted:1"],
    );
    let relisted = t.elapsed();
    // Once: the watch that follows starts after the compaction and stays.
    wait_until("the watch again", Duration::from_secs(5), || {
        gate.watches() > sent
    });
    let watches = gate.watches();
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        assert_eq!(gate.watches(), watches, "watching again in a loop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And it works: the revoke arrives as an event.
    let t2 = Instant::now();
    r.stop().unwrap();
    wait_until("the removal", Duration::from_secs(5), || {
        d.get_all().unwrap().is_empty()
    });
    eprintln!(
        "compaction: listed again {relisted:?} after the cancelled watch started; \
         removal seen {:?} after the revoke",
        t2.elapsed()
    );
    d.stop().unwrap();
}

#[test]
fn a_member_that_loses_quorum_ends_the_watches_on_it() {
    let Some(mut c) = Cluster::start(3) else {
        return;
    };
    const STREAMS: &str = "etcd_debugging_mvcc_watch_stream_total";
    // The first endpoint is member 0: the watch is opened there.
    let d = watching(&c.urls(), "q");
    assert!(d.get_all().unwrap().is_empty());
    wait_until("the watch on member 0", Duration::from_secs(10), || {
        c.metric(0, STREAMS) == Some(1.0)
    });
    c.stop_member(1, true);
    c.stop_member(2, true);
    let t = Instant::now();
    wait_until(
        "member 0 to end the watch once it has no leader",
        Duration::from_secs(10),
        || c.metric(0, STREAMS) == Some(0.0),
    );
    let ended = t.elapsed();
    c.restart_member(1, false);
    c.restart_member(2, false);
    let t = Instant::now();
    let r = registration(&c.urls(), "q", "tcp@quorum:1")
        .start()
        .unwrap();
    wait_until(
        "the watch to list a registration once quorum is back",
        Duration::from_secs(15),
        || d.get_all().unwrap() == ["tcp@quorum:1"],
    );
    eprintln!(
        "quorum lost: watch ended {ended:?} after two members died; a registration seen {:?} \
         after quorum came back",
        t.elapsed()
    );
    r.stop().unwrap();
    d.stop().unwrap();
}

#[test]
fn a_watch_stream_ended_by_an_error_object_or_a_bare_close_is_noticed_within_a_second() {
    let s = StandIn::start("3.4.23", "3.4.0");
    s.set(&["tcp@a:1"], 5);
    let d = watching(&[s.url()], "");
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    wait_until("the first watch", Duration::from_secs(5), || {
        s.watching() == 1
    });
    let mut revision = 5;
    for (end, next) in [
        (End::Error, &["tcp@a:1", "tcp@b:1"][..]),
        (End::Close, &["tcp@b:1"][..]),
    ] {
        revision += 1;
        // The change is not sent on the stream: only listing again finds it.
        s.set(next, revision);
        let t = Instant::now();
        s.end_watches(end);
        wait_until(
            &format!("the list after {end:?}"),
            Duration::from_secs(10),
            || d.get_all().unwrap() == next,
        );
        let noticed = t.elapsed();
        eprintln!("watch stream ended by {end:?}: noticed in {noticed:?}");
        assert!(
            noticed < Duration::from_secs(1),
            "{end:?} noticed only after {noticed:?}"
        );
        wait_until("the next watch", Duration::from_secs(5), || {
            s.watching() == 1
        });
    }
    d.stop().unwrap();
}

/// Watches the keys under `prefix` on member `on` (its own copy) and the
/// discovery's list for `during`; returns the longest time any of `want`
/// was missing from etcd, and from the discovery's list.
fn longest_gap(
    c: &Cluster,
    on: usize,
    prefix: &str,
    want: &[String],
    d: &RegistryDiscovery,
    addrs: &[&str],
    during: Duration,
) -> (Duration, Duration) {
    let start = Instant::now();
    let (mut etcd_since, mut listed_since): (Option<Instant>, Option<Instant>) = (None, None);
    let (mut etcd_gap, mut listed_gap) = (Duration::ZERO, Duration::ZERO);
    let gap = |present: bool, since: &mut Option<Instant>, longest: &mut Duration| {
        let now = Instant::now();
        if present {
            *since = None;
        } else {
            *longest = (*longest).max(now - *since.get_or_insert(now));
        }
    };
    while start.elapsed() < during {
        if let Some(k) = c.local_keys(on, prefix, Duration::from_millis(300)) {
            gap(k == want, &mut etcd_since, &mut etcd_gap);
        }
        gap(
            d.get_all().unwrap() == addrs,
            &mut listed_since,
            &mut listed_gap,
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (etcd_gap, listed_gap)
}

/// The member that leads, once one does.
fn leader(c: &Cluster) -> usize {
    let mut found = None;
    wait_until("a leader", Duration::from_secs(10), || {
        found = c.leader();
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn a_paused_leader_and_a_killed_member_do_not_lose_live_registrations() {
    let Some(mut c) = Cluster::start(3) else {
        return;
    };
    // The registrations list the leader first: its pause stalls their
    // keep-alives. The discovery lists a follower first, the member the
    // registrations move to: its death breaks both the keep-alives and the
    // watch sent to it.
    let first = leader(&c);
    let order: Vec<usize> = (0..3).map(|k| (first + k) % 3).collect();
    let urls: Vec<String> = order.iter().map(|&i| c.member_url(i)).collect();
    let addrs = ["tcp@live:1", "tcp@live:2"];
    let want = keys("live", &addrs);
    // The call timeout a user leaves as it is (2 s), as long as the TTL.
    let regs: Vec<EtcdRegistration> = addrs
        .iter()
        .map(|a| {
            registration(&urls, "live", a)
                .timeout(Duration::from_secs(2))
                .start()
                .unwrap()
        })
        .collect();
    let d = watching(&[urls[1].clone(), urls[2].clone(), urls[0].clone()], "live");
    wait_until("the list", Duration::from_secs(5), || {
        d.get_all().unwrap() == addrs
    });
    let prefix = "/regcenter/live/";
    // Paused for longer than the TTL, then let go on: it wakes believing
    // it leads, with leases it thinks expired.
    c.pause_member(first, true);
    let paused = longest_gap(&c, order[1], prefix, &want, &d, &addrs, TTL * 2);
    c.pause_member(first, false);
    let woke = longest_gap(&c, order[1], prefix, &want, &d, &addrs, TTL * 2);
    // Then the member the keep-alives moved to, and the discovery watches,
    // dies.
    c.stop_member(order[1], true);
    wait_until(
        "a leader among the two left",
        Duration::from_secs(10),
        || c.leader().is_some(),
    );
    let killed = longest_gap(&c, order[2], prefix, &want, &d, &addrs, TTL * 2);
    eprintln!(
        "registrations' longest gap in etcd: leader paused {:?}, after it woke {:?}, member \
         killed {:?}; in the discovery's list: {:?}, {:?}, {:?}",
        paused.0, woke.0, killed.0, paused.1, woke.1, killed.1
    );
    for (what, (gap, listed)) in [("paused", paused), ("woke", woke), ("killed", killed)] {
        assert!(gap < TTL, "{what}: a live registration missing for {gap:?}");
        assert!(
            listed < TTL,
            "{what}: a live server not listed for {listed:?}"
        );
    }
    for r in regs {
        r.stop().unwrap();
    }
    d.stop().unwrap();
}

#[test]
fn renewals_keep_the_lease_alive_without_writing() {
    let Some(c) = Cluster::start(3) else { return };
    // A TTL that a loaded machine's stalls cannot outlast: the lease must
    // not expire here, or the put that follows would be right.
    let r = registration(&c.urls(), "renew", "tcp@renew:1")
        .ttl(Duration::from_secs(10))
        .timeout(Duration::from_secs(2))
        .period(Duration::from_millis(100))
        .start()
        .unwrap();
    let revision = c.revision();
    wait_until("30 renewals", Duration::from_secs(20), || r.beats() > 30);
    assert_eq!(c.revision(), revision, "a renewal wrote to etcd");
    r.stop().unwrap();
}

#[test]
fn etcd_older_than_3_4_is_refused_at_start_and_at_the_first_fetch() {
    let old = StandIn::start("3.3.25", "3.3.0");
    let check = |e: regcenter::Error| {
        let text = e.to_string();
        assert!(
            matches!(e, regcenter::Error::InvalidConfig { .. }),
            "not a configuration error: {text}"
        );
        assert!(
            text.contains("3.3.25") && text.contains("3.4"),
            "says neither the version found nor the one needed: {text}"
        );
    };
    check(
        EtcdRegistration::builder(&[&old.url()], "tcp@old:1")
            .start()
            .unwrap_err(),
    );
    assert!(
        !old.requests().iter().any(|(_, r)| r.contains("/v3/")),
        "the registration called the old etcd's API: {:?}",
        old.requests()
    );
    let d = RegistryDiscovery::etcd(&[&old.url()]).build().unwrap();
    check(d.get_all().unwrap_err());
    for (server, cluster) in [("3.4.23", "3.4.0"), ("3.5.9", "3.5.0")] {
        let s = StandIn::start(server, cluster);
        s.set(&["tcp@new:1"], 3);
        let r = EtcdRegistration::builder(&[&s.url()], "tcp@new:1")
            .start()
            .unwrap();
        let d = RegistryDiscovery::etcd(&[&s.url()]).build().unwrap();
        assert_eq!(d.get_all().unwrap(), ["tcp@new:1"], "etcd {server}");
        r.stop().unwrap();
    }
}

#[test]
fn a_paused_follower_in_use_does_not_let_a_lease_expire() {
    let Some(c) = Cluster::start(3) else { return };
    // A follower is the endpoint in use: the leader keeps counting the
    // lease down while the keep-alives sent to the follower hang.
    let lead = leader(&c);
    let follower = (lead + 1) % 3;
    let urls: Vec<String> = [follower, (lead + 2) % 3, lead]
        .iter()
        .map(|&i| c.member_url(i))
        .collect();
    let addrs = ["tcp@kept:1"];
    let want = keys("kept", &addrs);
    // The call timeout a user leaves as it is (2 s), as long as the TTL.
    let r = registration(&urls, "kept", addrs[0])
        .timeout(Duration::from_secs(2))
        .start()
        .unwrap();
    let d = watching(&[urls[2].clone()], "kept");
    wait_until("the list", Duration::from_secs(5), || {
        d.get_all().unwrap() == addrs
    });
    c.pause_member(follower, true);
    let paused = longest_gap(&c, lead, "/regcenter/kept/", &want, &d, &addrs, TTL * 2);
    c.pause_member(follower, false);
    eprintln!(
        "follower in use paused: registration missing from etcd {:?}, from the list {:?}",
        paused.0, paused.1
    );
    assert_eq!(paused.0, Duration::ZERO, "the lease expired");
    assert_eq!(paused.1, Duration::ZERO, "the server left the list");
    r.stop().unwrap();
    d.stop().unwrap();
}
