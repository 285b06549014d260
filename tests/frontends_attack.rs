//! Front-ends on etcd under the conditions their design has to survive:
//! etcd losing its data, a member frozen under a watch, a relist racing
//! the watch, TTL changes, and filtered long-polls moving between
//! front-ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use regcenter::RegistryServer;
use serde_json::json;

use crate::common::etcd::{self, Cluster, b64, call};
use crate::common::{raw, wait_until};

use crate::frontends::{PATH, front, fronts, index_of, listing, listing_at, post};

#[test]
fn a_front_end_follows_an_etcd_that_lost_its_data() {
    let Some(mut e) = etcd::start() else { return };
    let a = front(&e, Duration::from_secs(60));
    let at = a.local_addr();
    // Enough revisions that the front-end has followed etcd well past
    // where a fresh etcd starts again.
    for n in 0..20 {
        let addr = format!("tcp@127.0.0.1:{}", 7000 + n);
        assert_eq!(post(at, &addr, &[]).status, 200);
    }
    assert_eq!(listing(at).1.len(), 20);
    e.restart(true);
    wait_until(
        "registrations accepted again",
        Duration::from_secs(15),
        || post(at, "tcp@127.0.0.1:7100", &[]).status == 200,
    );
    // etcd has it; a front-end that lists from etcd must list it.
    assert_eq!(e.range("/regcenter//tcp@127.0.0.1:7100").len(), 1);
    wait_until(
        "the new registration listed by the front-end that wrote it",
        Duration::from_secs(10),
        || listing(at).1.contains(&"tcp@127.0.0.1:7100".to_string()),
    );
    a.shutdown().unwrap();
}

#[test]
fn a_shorter_ttl_asked_at_one_front_end_holds_at_the_others() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let s = "tcp@127.0.0.1:7001";
    // Registered with the default 60 s, and heard by both front-ends.
    assert_eq!(post(a.local_addr(), s, &[]).status, 200);
    assert_eq!(post(b.local_addr(), s, &[]).status, 200);
    wait_until("both claims", Duration::from_secs(10), || {
        e.range("/regcenter.claims/").len() == 2
    });
    // The server restarts with a 1 s TTL and beats to A only, then stops.
    let ttl = [("X-Myrpc-Ttl", "1s")];
    for _ in 0..3 {
        let r = post(a.local_addr(), s, &ttl);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("X-Myrpc-Ttl"), Some("1s"));
    }
    // Gone within its TTL plus 2 s from both, as with one registry: well
    // within this deadline, far below the 60 s it was registered with.
    wait_until(
        "the silent server gone from both front-ends",
        Duration::from_secs(10),
        || listing(a.local_addr()).1.is_empty() && listing(b.local_addr()).1.is_empty(),
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_filtered_long_poll_moving_between_front_ends_never_sees_its_index_go_back() {
    let Some(e) = etcd::start() else { return };
    let a = front(&e, Duration::from_secs(60));
    let eu = [("X-Myrpc-Meta", "zone=eu")];
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7001", &eu).status, 200);
    // Another service moves etcd on: a front-end started now loads the
    // entry at a later revision than the one A saw it written at.
    let other = raw(
        a.local_addr(),
        "POST",
        &format!("{PATH}/other"),
        &[("X-Myrpc-Server", "tcp@127.0.0.1:7003")],
    );
    assert_eq!(other.status, 200);
    let b = front(&e, Duration::from_secs(60));
    let filter = "&meta.zone=eu";
    let (index, seen) = listing_at(b.local_addr(), filter);
    assert_eq!(seen, ["tcp@127.0.0.1:7001"]);
    // The client, moved to A, long-polls past the index B gave it.
    let r = raw(
        a.local_addr(),
        "GET",
        &format!("{PATH}?format=text{filter}&index={index}&wait=300ms"),
        &[],
    );
    assert_eq!(r.status, 200);
    let now = index_of(&r);
    assert!(now >= index, "index went back from {index} to {now}");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_paused_member_under_the_watch_does_not_hide_changes() {
    let Some(e) = Cluster::start(3) else {
        return;
    };
    let (a, b) = fronts(&e);
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7001", &[]).status, 200);
    wait_until("B lists the first", Duration::from_secs(5), || {
        listing(b.local_addr()).1.len() == 1
    });
    // The first member, which both front-ends watch, freezes: a member
    // down, which must change nothing.
    e.pause_member(0, true);
    let r = post(a.local_addr(), "tcp@127.0.0.1:7002", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = Instant::now();
    let seen = |at: SocketAddr| listing(at).1.contains(&"tcp@127.0.0.1:7002".to_string());
    // Generous against the 100 ms asked for: the two live members have
    // had the change all along.
    let deadline = Duration::from_secs(3);
    while t.elapsed() < deadline && !(seen(a.local_addr()) && seen(b.local_addr())) {
        thread::sleep(Duration::from_millis(20));
    }
    let (at_a, at_b) = (seen(a.local_addr()), seen(b.local_addr()));
    e.pause_member(0, false);
    assert!(
        at_a && at_b,
        "with a member frozen, the registration was not listed within {deadline:?} (listed at the writer: {at_a}, at the other: {at_b})"
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

/// Writes `n` entries of service `bulk` straight into etcd, bound to a
/// lease of their own (the library's way), so front-ends never expire
/// them.
fn bulk(e: &Cluster, n: usize) {
    let url = e.url();
    let lease = call(&url, "/v3/lease/grant", &json!({ "TTL": 600 })).expect("grant");
    let lease = lease["ID"].as_str().unwrap().to_string();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|i| {
                let addr = format!("tcp@127.0.0.2:{}", 10_000 + i);
                let key = format!("/regcenter/bulk/{addr}");
                let value = json!({ "addr": addr, "weight": 1, "meta": { "pad": "x".repeat(64) } });
                json!({ "request_put": { "key": b64(key.as_bytes()), "value": b64(value.to_string().as_bytes()), "lease": lease } })
            })
            .collect();
        let v = call(&url, "/v3/kv/txn", &json!({ "success": ops })).expect("txn");
        assert!(v.get("error").is_none(), "{v}");
    }
}

#[test]
fn a_relist_for_a_long_poll_does_not_undo_what_the_watch_applied() {
    let Some(e) = etcd::start() else { return };
    bulk(&e, 3000);
    let (a, b) = fronts(&e);
    let (at_a, at_b) = (a.local_addr(), b.local_addr());
    assert_eq!(listing_at(at_b, "").1.len(), 0);
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    // A client showing an index ahead of B (one from before an etcd
    // restart, or from a front-end further on): B catches up by reading
    // the table again, from this worker, while its watch applies writes.
    let pollers: Vec<_> = (0..2)
        .map(|_| {
            let (done, polls) = (done.clone(), polls.clone());
            thread::spawn(move || {
                let started = Instant::now();
                while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                    let r = raw(
                        at_b,
                        "GET",
                        &format!("{PATH}?format=text&index=1000000000&wait=1s"),
                        &[],
                    );
                    assert_eq!(r.status, 200);
                    polls.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Writes go on at A until the last of those relists is over, so that
    // none of them reads a table that no write follows.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let writing = writing.clone();
        thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0;
            while writing.load(Ordering::SeqCst)
                && n < 20_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let addr = format!("tcp@127.0.0.1:{}", 20_000 + n);
                // A registration refused under load (503) is not counted.
                let status = post(at_a, &addr, &[]).status;
                assert!(status == 200 || status == 503, "{status}");
                n += usize::from(status == 200);
            }
            n
        })
    };
    wait_until("16 relists at B", Duration::from_secs(40), || {
        polls.load(Ordering::SeqCst) >= 16
    });
    done.store(true, Ordering::SeqCst);
    for p in pollers {
        p.join().unwrap();
    }
    writing.store(false, Ordering::SeqCst);
    let n = writer.join().unwrap();
    eprintln!(
        "{n} registrations at A while {} long-polls made B read the table again",
        polls.load(Ordering::SeqCst)
    );
    assert_eq!(listing(at_a).1.len(), n, "A lists every registration");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut at_b_now = listing(at_b).1;
    while at_b_now.len() != n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        at_b_now = listing(at_b).1;
    }
    let in_etcd = e.range("/regcenter//").len();
    assert_eq!(
        at_b_now.len(),
        n,
        "B lists {} of the {n} registrations etcd holds ({in_etcd})",
        at_b_now.len()
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_deregistration_racing_a_heartbeat_at_another_front_end_leaves_nothing_forever() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let (at_a, at_b) = (a.local_addr(), b.local_addr());
    let ttl = [("X-Myrpc-Ttl", "1s")];
    for n in 0..150 {
        let addr = format!("tcp@127.0.0.1:{}", 7000 + n);
        // A registration refused under load (503, Retry-After) is retried.
        wait_until("the registration", Duration::from_secs(10), || {
            post(at_a, &addr, &ttl).status == 200
        });
        wait_until("B lists it", Duration::from_secs(5), || {
            listing(at_b).1.contains(&addr)
        });
        // Its server beats to B for the first time while an operator
        // deregisters it at A.
        let beat = {
            let addr = addr.clone();
            thread::spawn(move || post(at_b, &addr, &[("X-Myrpc-Ttl", "1s")]).status)
        };
        let mut refused = false;
        wait_until("the deregistration", Duration::from_secs(10), || {
            let r = raw(at_a, "DELETE", PATH, &[("X-Myrpc-Server", &addr)]);
            if r.status == 503 {
                // Refused under load, perhaps after etcd took it.
                refused = true;
                return false;
            }
            assert!(
                r.status == 200 || refused && r.status == 404,
                "{}",
                r.text()
            );
            true
        });
        let beat = beat.join().unwrap();
        assert!(beat == 200 || beat == 503, "{beat}");
    }
    // Whatever each race left, the servers are silent now: a 1 s TTL
    // later nothing of them is left, in etcd or at either front-end.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = e.range("/regcenter//");
    while !left.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        left = e.range("/regcenter//");
    }
    let keys: Vec<&String> = left.iter().map(|(k, _)| k).collect();
    assert!(
        left.is_empty(),
        "silent servers still in etcd 10 s after their last beat: {keys:?}"
    );
    assert!(listing(at_b).1.is_empty());
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_long_poll_never_gets_half_of_a_revision() {
    let Some(e) = etcd::start() else { return };
    let b = front(&e, Duration::from_secs(60));
    let at = b.local_addr();
    let lease = call(&e.url(), "/v3/lease/grant", &json!({ "TTL": 600 })).expect("grant");
    let lease = lease["ID"].as_str().unwrap().to_string();
    let mut torn = 0;
    for round in 0..20 {
        let (index, before) = listing(at);
        let waiting = thread::spawn(move || {
            raw(
                at,
                "GET",
                &format!("{PATH}?format=text&index={index}&wait=5s"),
                &[],
            )
        });
        wait_until("the long-poll to park", Duration::from_secs(10), || {
            b.parked() == 1
        });
        // One etcd transaction, one revision: 50 servers at once (a tool
        // writing the library's layout, or the library's entries of one
        // deployment).
        let ops: Vec<_> = (0..50)
            .map(|i| {
                let addr = format!("tcp@127.0.0.3:{}", 10_000 + round * 100 + i);
                let key = format!("/regcenter//{addr}");
                let value = json!({ "addr": addr, "weight": 1, "meta": {} });
                json!({ "request_put": { "key": b64(key.as_bytes()), "value": b64(value.to_string().as_bytes()), "lease": lease } })
            })
            .collect();
        call(&e.url(), "/v3/kv/txn", &json!({ "success": ops })).expect("txn");
        let r = waiting.join().unwrap();
        let got = r.text().lines().count();
        if got != before.len() + 50 {
            torn += 1;
            // The rest of the revision must come as a change, past the
            // index of that answer.
            let again = raw(
                at,
                "GET",
                &format!("{PATH}?format=text&index={}&wait=1s", index_of(&r)),
                &[],
            );
            assert_eq!(
                again.text().lines().count(),
                before.len() + 50,
                "round {round}"
            );
            assert!(
                index_of(&again) > index_of(&r),
                "round {round}: answered {got} of {} under index {}, then the rest under the same index",
                before.len() + 50,
                index_of(&r)
            );
        }
    }
    eprintln!("{torn} of 20 long-polls answered part of one revision");
    b.shutdown().unwrap();
}

#[test]
fn a_front_end_whose_member_froze_through_a_compaction_catches_up() {
    let Some(e) = Cluster::start(3) else {
        return;
    };
    let a = front(&e, Duration::from_secs(60));
    // B knows member 0 only: frozen, it is all of etcd for B.
    let b = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_secs(60))
        .threads(2)
        .etcd(&[&e.member_url(0)])
        .etcd_lease_ttl(Duration::from_secs(2))
        .start()
        .unwrap();
    for s in ["tcp@127.0.0.1:7001", "tcp@127.0.0.1:7002"] {
        assert_eq!(post(a.local_addr(), s, &[]).status, 200);
    }
    wait_until("B lists both", Duration::from_secs(5), || {
        listing(b.local_addr()).1.len() == 2
    });
    e.pause_member(0, true);
    // Meanwhile: one added, one removed, the history compacted away.
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7003", &[]).status, 200);
    let r = raw(
        a.local_addr(),
        "DELETE",
        PATH,
        &[("X-Myrpc-Server", "tcp@127.0.0.1:7002")],
    );
    assert_eq!(r.status, 200);
    let rev = call(
        &e.member_url(1),
        "/v3/kv/range",
        &json!({ "key": b64(b"\0"), "count_only": true }),
    )
    .unwrap()["header"]["revision"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let v = call(
        &e.member_url(1),
        "/v3/kv/compaction",
        &json!({ "revision": rev.to_string(), "physical": true }),
    )
    .unwrap();
    assert!(v.get("error").is_none(), "{v}");
    e.pause_member(0, false);
    let want = ["tcp@127.0.0.1:7001", "tcp@127.0.0.1:7003"];
    wait_until("B to catch up", Duration::from_secs(30), || {
        listing(b.local_addr()).1 == want
    });
    assert!(listing(b.local_addr()).0 >= listing(a.local_addr()).0);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_front_end_counts_only_the_renewals_it_received() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let s = "tcp@127.0.0.1:7001";
    assert_eq!(post(a.local_addr(), s, &[]).status, 200);
    for w in 2..5 {
        let w = w.to_string();
        assert_eq!(
            post(a.local_addr(), s, &[("X-Myrpc-Weight", &w)]).status,
            200
        );
    }
    wait_until("B follows", Duration::from_secs(5), || {
        raw(b.local_addr(), "GET", &format!("{PATH}?format=json"), &[]).json()["servers"][0]["weight"]
            == 4
    });
    // An index ahead of B's makes it read the table again.
    let r = raw(
        b.local_addr(),
        "GET",
        &format!("{PATH}?format=text&index=1000000&wait=0s"),
        &[],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        b.registry().stats().renewals,
        0,
        "B received no heartbeat at all"
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}
