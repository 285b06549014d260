//! Filtered listings (`?meta.KEY=VALUE`) and their long-polls over
//! loopback.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use regcenter::RegistryServer;

use crate::common::{Raw, lasting_builder, raw, wait_until};

const P: &str = "/myRPC/registry";
const SOON: Duration = Duration::from_secs(5);

/// A lasting registry that takes TTLs down to 50 ms, for entries meant to
/// expire.
fn server() -> RegistryServer {
    lasting_builder()
        .min_ttl(Duration::from_millis(50))
        .start()
        .unwrap()
}

fn post(s: &RegistryServer, addr: &str, headers: &[(&str, &str)]) {
    let mut h = vec![("X-Myrpc-Server", addr)];
    h.extend_from_slice(headers);
    let r = raw(s.local_addr(), "POST", &format!("{P}/svc"), &h);
    assert_eq!(r.status, 200, "{}", r.text());
}

fn zone(s: &RegistryServer, addr: &str, zone: &str) {
    post(s, addr, &[("X-Myrpc-Meta", &format!("zone={zone}"))]);
}

fn delete(s: &RegistryServer, addr: &str) {
    let r = raw(
        s.local_addr(),
        "DELETE",
        &format!("{P}/svc"),
        &[("X-Myrpc-Server", addr)],
    );
    assert_eq!(r.status, 200);
}

fn get(s: &RegistryServer, query: &str) -> Raw {
    let r = raw(s.local_addr(), "GET", &format!("{P}/svc?{query}"), &[]);
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r
}

fn index(r: &Raw) -> u64 {
    r.header("X-Myrpc-Index").unwrap().parse().unwrap()
}

/// Starts a long-poll in a thread; returns once the server has parked it.
fn watch(s: &RegistryServer, query: &str) -> JoinHandle<Raw> {
    let before = s.parked();
    let addr = s.local_addr();
    let path = format!("{P}/svc?{query}");
    let h = thread::spawn(move || raw(addr, "GET", &path, &[]));
    wait_until("the long-poll to be parked", SOON, || s.parked() > before);
    h
}

#[test]
fn a_filtered_watch_sleeps_through_other_zones_and_wakes_for_its_own() {
    let s = server();
    zone(&s, "tcp@a:1", "eu");
    zone(&s, "tcp@b:1", "us");
    let n = index(&get(&s, "meta.zone=eu&format=text"));
    let w = watch(&s, &format!("meta.zone=eu&format=text&index={n}&wait=30s"));

    // Every kind of change, in another zone: a new server, a new weight,
    // a drain, a deregistration. Each was committed (and its watchers
    // taken) before its answer came back.
    zone(&s, "tcp@c:1", "us");
    post(
        &s,
        "tcp@b:1",
        &[("X-Myrpc-Meta", "zone=us"), ("X-Myrpc-Weight", "4")],
    );
    post(
        &s,
        "tcp@c:1",
        &[("X-Myrpc-Meta", "zone=us"), ("X-Myrpc-Status", "draining")],
    );
    delete(&s, "tcp@c:1");
    post(&s, "tcp@u:1", &[]);
    assert!(index(&get(&s, "")) > n, "the service itself moved");
    assert_eq!(s.parked(), 1, "woken by another zone's change");

    let t = Instant::now();
    zone(&s, "tcp@d:1", "eu");
    let r = w.join().unwrap();
    assert!(t.elapsed() < SOON);
    assert_eq!(r.text(), "tcp@a:1\ntcp@d:1\n");
    assert!(index(&r) > n);
}

#[test]
fn a_filtered_watch_wakes_when_a_server_leaves_its_listing() {
    let s = server();
    zone(&s, "tcp@a:1", "eu");
    zone(&s, "tcp@b:1", "eu");
    zone(&s, "tcp@x:1", "us");
    // Relabelled out of the zone, deregistered, drained, expired: each is
    // a change of the eu listing, seen by a watcher parked on it.
    type Step = Box<dyn Fn(&RegistryServer)>;
    let steps: Vec<(&str, Step, &str)> = vec![
        (
            "relabelled",
            Box::new(|s| zone(s, "tcp@a:1", "us")),
            "tcp@b:1",
        ),
        ("deregistered", Box::new(|s| delete(s, "tcp@b:1")), ""),
        (
            "registered",
            Box::new(|s| {
                post(
                    s,
                    "tcp@e:1",
                    &[("X-Myrpc-Meta", "zone=eu"), ("X-Myrpc-Ttl", "200ms")],
                );
            }),
            "tcp@e:1",
        ),
        // Nothing is done: the sweeper expires e.
        ("expired", Box::new(|_| {}), ""),
    ];
    for (what, step, want) in steps {
        let n = index(&get(&s, "meta.zone=eu"));
        let w = watch(&s, &format!("meta.zone=eu&index={n}&wait=30s"));
        step(&s);
        let r = w.join().unwrap();
        assert_eq!(r.header("X-Myrpc-Servers"), Some(want), "{what}");
        assert!(index(&r) > n, "{what}");
    }
    assert_eq!(
        get(&s, "meta.zone=us").header("X-Myrpc-Servers"),
        Some("tcp@a:1,tcp@x:1")
    );
}

#[test]
fn a_filtered_index_never_goes_backwards_and_stays_put_for_other_zones() {
    let s = server();
    let mut last = 0;
    let mut check = |s: &RegistryServer, moved: bool| -> u64 {
        let text = get(s, "meta.zone=eu&format=text");
        let seed = get(s, "meta.zone=eu");
        let json = get(s, "meta.zone=eu&format=json");
        let v: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
        let at = index(&text);
        assert_eq!(index(&seed), at);
        assert_eq!(v["index"].as_u64(), Some(at));
        assert_eq!(index(&json), at);
        assert!(at >= last, "backwards: {at} after {last}");
        assert_eq!(at > last, moved, "{at} after {last}");
        last = at;
        at
    };
    check(&s, false);
    zone(&s, "tcp@a:1", "eu");
    check(&s, true);
    zone(&s, "tcp@b:1", "us");
    check(&s, false);
    post(
        &s,
        "tcp@a:1",
        &[("X-Myrpc-Meta", "zone=eu"), ("X-Myrpc-Weight", "2")],
    );
    check(&s, true);
    delete(&s, "tcp@b:1");
    check(&s, false);
    delete(&s, "tcp@a:1");
    // The service emptied out and left the table.
    let emptied = check(&s, true);
    zone(&s, "tcp@c:1", "us");
    check(&s, false);
    zone(&s, "tcp@d:1", "eu");
    check(&s, true);

    // A wait that passes answers the same index and list, though the
    // service moved meanwhile.
    let n = check(&s, false);
    assert!(n > emptied);
    let w = watch(
        &s,
        &format!("meta.zone=eu&format=text&index={n}&wait=300ms"),
    );
    zone(&s, "tcp@e:1", "us");
    let r = w.join().unwrap();
    assert_eq!((r.text().as_str(), index(&r)), ("tcp@d:1\n", n));
    assert!(index(&get(&s, "")) > n);
    check(&s, false);
}

#[test]
fn a_filtered_watch_parking_answers_no_other_watcher_early() {
    let s = server();
    zone(&s, "tcp@a:1", "eu");
    let eu = index(&get(&s, "meta.zone=eu"));
    // The service moves on in another zone: its index passes eu's.
    zone(&s, "tcp@b:1", "us");
    let all = index(&get(&s, ""));
    assert!(all > eu);
    let started = Instant::now();
    let unfiltered = watch(&s, &format!("index={all}&wait=3s"));
    let addr = s.local_addr();
    let path = format!("{P}/svc?meta.zone=eu&index={eu}&wait=3s");
    let filtered = thread::spawn(move || raw(addr, "GET", &path, &[]));
    // Nothing changed for either: both wait out their 3 s.
    let r = unfiltered.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "an unfiltered watch was answered after {:?}, when a filtered one parked",
        started.elapsed()
    );
    assert_eq!(index(&r), all);
    filtered.join().unwrap();
}
