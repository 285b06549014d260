//! Front-ends on etcd (`serve --etcd`): several registries serving one
//! table kept in a real etcd on loopback (Debian's etcd-server).

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use regcenter::{Discovery, EtcdRegistration, RegistryServer};

use crate::common::etcd::{self, Cluster};
use crate::common::process::Process;
use crate::common::{Raw, raw, wait_until};

pub const PATH: &str = "/myRPC/registry";

/// A front-end on `e` on a free port: entries' TTL `ttl` unless they ask,
/// servers may ask for as little as 100 ms.
pub fn front(e: &Cluster, ttl: Duration) -> RegistryServer {
    let urls = e.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(ttl)
        .min_ttl(Duration::from_millis(100))
        .threads(2)
        .etcd(&urls)
        .etcd_lease_ttl(Duration::from_secs(2))
        .start()
        .unwrap()
}

/// Two front-ends on `e`, entries' TTL a minute unless they ask.
pub fn fronts(e: &Cluster) -> (RegistryServer, RegistryServer) {
    let ttl = Duration::from_secs(60);
    (front(e, ttl), front(e, ttl))
}

pub fn post(at: SocketAddr, server: &str, headers: &[(&str, &str)]) -> Raw {
    let mut h = vec![("X-Myrpc-Server", server)];
    h.extend_from_slice(headers);
    raw(at, "POST", PATH, &h)
}

/// The text listing of the default service with `query` (`&meta.k=v`…):
/// index and addresses.
pub fn listing_at(at: SocketAddr, query: &str) -> (u64, Vec<String>) {
    let r = raw(at, "GET", &format!("{PATH}?format=text{query}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    (index_of(&r), r.text().lines().map(str::to_string).collect())
}

/// The text listing of the default service: index and addresses.
pub fn listing(at: SocketAddr) -> (u64, Vec<String>) {
    listing_at(at, "")
}

pub fn index_of(r: &Raw) -> u64 {
    r.header("X-Myrpc-Index").unwrap().parse().unwrap()
}

/// A long-poll of the default service's text listing past `index`.
fn poll(at: SocketAddr, index: u64, wait: &str) -> Raw {
    raw(
        at,
        "GET",
        &format!("{PATH}?format=text&index={index}&wait={wait}"),
        &[],
    )
}

#[test]
fn a_registration_at_one_front_end_is_served_and_woken_at_the_others() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let (at_a, at_b) = (a.local_addr(), b.local_addr());
    let mut took = Vec::new();
    for n in 0..20 {
        let (index, before) = listing(at_b);
        assert_eq!(before.len(), n);
        let waiting = thread::spawn(move || {
            let r = poll(at_b, index, "10s");
            (Instant::now(), r)
        });
        wait_until("the long-poll to park", Duration::from_secs(10), || {
            b.parked() == 1
        });
        let addr = format!("tcp@127.0.0.1:{}", 7000 + n);
        let t = Instant::now();
        let r = post(
            at_a,
            &addr,
            &[("X-Myrpc-Weight", "2"), ("X-Myrpc-Meta", "zone=eu")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let written = index_of(&r);
        let (when, answer) = waiting.join().unwrap();
        took.push(when.duration_since(t));
        assert!(
            answer.text().lines().any(|l| l == addr),
            "{}",
            answer.text()
        );
        // Both front-ends serve the change at the index the write answered.
        assert_eq!(index_of(&answer), written);
        assert_eq!(listing(at_a).0, written);
    }
    // Every format of the other front-end, the seed's header included.
    let seed = raw(at_b, "GET", PATH, &[]);
    assert_eq!(
        seed.header("X-Myrpc-Servers").unwrap().split(',').count(),
        20
    );
    assert!(seed.body.is_empty());
    let json = raw(at_b, "GET", &format!("{PATH}?format=json"), &[]).json();
    assert_eq!(json["servers"][0]["weight"], 2);
    assert_eq!(json["servers"][0]["meta"]["zone"], "eu");
    // A DELETE at one is seen at the other.
    let r = raw(
        at_b,
        "DELETE",
        PATH,
        &[("X-Myrpc-Server", "tcp@127.0.0.1:7000")],
    );
    assert_eq!(r.status, 200);
    wait_until(
        "the removal at the other front-end",
        Duration::from_secs(5),
        || !listing(at_a).1.contains(&"tcp@127.0.0.1:7000".to_string()),
    );
    took.sort();
    eprintln!(
        "propagation between front-ends (POST sent to long-poll answered): median {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn renewals_stay_at_the_front_end_and_do_not_write_to_etcd() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let servers: Vec<String> = (0..200)
        .map(|i| format!("tcp@127.0.0.1:{}", 10_000 + i))
        .collect();
    // Registered through A, renewed through both: B writes one claim each.
    for s in &servers {
        assert_eq!(post(a.local_addr(), s, &[]).status, 200);
    }
    for s in &servers {
        assert_eq!(post(b.local_addr(), s, &[]).status, 200);
    }
    wait_until("B's claims to be written", Duration::from_secs(10), || {
        e.range("/regcenter.claims/").len() == 400
    });
    let before = e.revision();
    let started = Instant::now();
    let mut renewals = 0;
    for round in 0..10 {
        for s in &servers {
            let at = if round % 2 == 0 {
                a.local_addr()
            } else {
                b.local_addr()
            };
            assert_eq!(post(at, s, &[]).status, 200);
            renewals += 1;
        }
    }
    let moved = e.revision() - before;
    eprintln!(
        "{renewals} renewals in {:?} moved etcd's revision by {moved}",
        started.elapsed()
    );
    assert_eq!(moved, 0, "renewals that change nothing are not written");
    // A change is: one revision for the entry, whichever front-end.
    assert_eq!(
        post(b.local_addr(), &servers[0], &[("X-Myrpc-Weight", "5")]).status,
        200
    );
    assert_eq!(e.revision() - before, 1);
    // Counted where they were received.
    assert!(a.registry().stats().renewals + b.registry().stats().renewals >= 2200);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_silent_server_expires_at_every_front_end_whichever_it_beat_to() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let ttl = [("X-Myrpc-Ttl", "1s")];
    // Beats to A and B in turn, then stops.
    let mut last = Instant::now();
    for i in 0..6 {
        if i > 0 {
            thread::sleep(Duration::from_millis(200)); // the server's beat period
        }
        let at = if i % 2 == 0 {
            a.local_addr()
        } else {
            b.local_addr()
        };
        assert_eq!(post(at, "tcp@127.0.0.1:7001", &ttl).status, 200);
        last = Instant::now();
    }
    wait_until("expiry at both front-ends", Duration::from_secs(10), || {
        listing(a.local_addr()).1.is_empty() && listing(b.local_addr()).1.is_empty()
    });
    let gone = last.elapsed();
    eprintln!(
        "a server silent for its 1 s TTL was gone from both front-ends {gone:?} after its last beat"
    );
    assert!(
        gone >= Duration::from_millis(900),
        "gone {gone:?} after its last beat, before its TTL"
    );
    assert!(e.range("/regcenter").is_empty(), "entry and claims deleted");
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_killed_front_end_loses_no_live_server_and_hands_over_the_ones_only_it_heard() {
    let Some(e) = etcd::start() else { return };
    let args = [
        "--etcd",
        &e.url(),
        "--etcd-lease",
        "2s",
        "--min-ttl",
        "100ms",
        "--no-udp",
    ];
    let (mut doomed, at_doomed) = Process::serve(&args);
    let (mut other, at_other) = Process::serve(&args);
    let ttl = [("X-Myrpc-Ttl", "2s")];
    // `both` beats to both front-ends; `only` to the doomed one alone.
    for s in ["tcp@127.0.0.1:7001", "tcp@127.0.0.1:7002"] {
        assert_eq!(post(at_doomed, s, &ttl).status, 200);
    }
    assert_eq!(post(at_other, "tcp@127.0.0.1:7001", &ttl).status, 200);
    wait_until("both listed at the other", Duration::from_secs(5), || {
        listing(at_other).1.len() == 2
    });
    doomed.signal(libc::SIGKILL);
    let killed = Instant::now();
    let mut only_gone = None;
    // `both` beats on at the survivor every 300 ms; it is listed at every
    // look, until `only` has been handed over and expired.
    let mut next_beat = Instant::now();
    while killed.elapsed() < Duration::from_secs(15) {
        if Instant::now() >= next_beat {
            assert_eq!(post(at_other, "tcp@127.0.0.1:7001", &ttl).status, 200);
            next_beat += Duration::from_millis(300);
        }
        let (_, list) = listing(at_other);
        assert!(
            list.contains(&"tcp@127.0.0.1:7001".to_string()),
            "a server beating to a live front-end went missing {:?} after the kill",
            killed.elapsed()
        );
        if only_gone.is_none() && !list.contains(&"tcp@127.0.0.1:7002".to_string()) {
            only_gone = Some(killed.elapsed());
        }
        if only_gone.is_some_and(|g| killed.elapsed() > g + Duration::from_secs(1)) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let only_gone = only_gone.expect("the server only the dead front-end heard from expires");
    eprintln!(
        "after a kill -9: the server only the dead front-end heard (TTL 2 s, front-end lease 2 s) was gone {only_gone:?} later"
    );
    assert!(
        only_gone >= Duration::from_secs(2),
        "gone {only_gone:?} after the kill: before its TTL"
    );
    let _ = doomed.wait(Duration::from_secs(5));
    other.signal(libc::SIGTERM);
    assert!(other.wait(Duration::from_secs(10)).success());
}

#[test]
fn indexes_never_go_back_for_a_client_moving_between_front_ends() {
    let Some(e) = etcd::start() else { return };
    let a = front(&e, Duration::from_secs(60));
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7001", &[]).status, 200);
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7002", &[]).status, 200);
    // The service's last change is a removal, which a front-end started
    // later cannot read back from etcd, and another service changed after
    // it: that front-end serves the revision it read at, ahead of A's.
    assert_eq!(
        raw(
            a.local_addr(),
            "DELETE",
            PATH,
            &[("X-Myrpc-Server", "tcp@127.0.0.1:7002")]
        )
        .status,
        200
    );
    let other = raw(
        a.local_addr(),
        "POST",
        &format!("{PATH}/other"),
        &[("X-Myrpc-Server", "tcp@127.0.0.1:7003")],
    );
    assert_eq!(other.status, 200);
    let b = front(&e, Duration::from_secs(60));
    let fronts = [a.local_addr(), b.local_addr()];
    // The client starts at B, ahead.
    let (mut index, mut seen) = listing(fronts[1]);
    assert!(index > listing(fronts[0]).0, "the case this test is for");
    let mut answers = 0;
    for step in 0..12 {
        let at = fronts[step % 2];
        let writer = fronts[(step + 1) % 2];
        let change = step % 3 == 1;
        let parked = thread::spawn(move || poll(at, index, "300ms"));
        if change {
            thread::sleep(Duration::from_millis(20));
            let addr = format!("tcp@127.0.0.1:{}", 8000 + step);
            assert_eq!(post(writer, &addr, &[]).status, 200);
        }
        let r = parked.join().unwrap();
        answers += 1;
        let now = index_of(&r);
        assert!(
            now >= index,
            "step {step}: index went back from {index} to {now}"
        );
        let list: Vec<String> = r.text().lines().map(str::to_string).collect();
        if now == index {
            assert_eq!(
                list, seen,
                "step {step}: a different list under the same index"
            );
        }
        (index, seen) = (now, list);
    }
    assert_eq!(answers, 12);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn entries_of_the_library_and_of_front_ends_list_each_other() {
    let Some(e) = etcd::start() else { return };
    let a = front(&e, Duration::from_secs(60));
    let lib = EtcdRegistration::builder(&[&e.url()], "tcp@127.0.0.1:7100")
        .ttl(Duration::from_secs(2))
        .weight(3)
        .start()
        .unwrap();
    wait_until(
        "the library's entry at the front-end",
        Duration::from_secs(5),
        || listing(a.local_addr()).1 == ["tcp@127.0.0.1:7100"],
    );
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7101", &[]).status, 200);
    let d = regcenter::RegistryDiscovery::etcd(&[&e.url()])
        .build()
        .unwrap();
    assert_eq!(
        d.get_all().unwrap(),
        ["tcp@127.0.0.1:7100", "tcp@127.0.0.1:7101"]
    );
    // The front-end never expires an entry a lease keeps: past several of
    // the front-end's expiry checks and the library's TTL, it stays.
    let kept = lib.beats();
    wait_until("4 keep-alives", Duration::from_secs(10), || {
        lib.beats() >= kept + 4
    });
    assert!(
        listing(a.local_addr())
            .1
            .contains(&"tcp@127.0.0.1:7100".to_string())
    );
    lib.stop().unwrap();
    wait_until("the revoked entry gone", Duration::from_secs(5), || {
        listing(a.local_addr()).1 == ["tcp@127.0.0.1:7101"]
    });
    a.shutdown().unwrap();
}

#[test]
fn with_etcd_unreachable_reads_go_on_degraded_and_registrations_wait() {
    let Some(mut e) = etcd::start() else { return };
    let a = front(&e, Duration::from_secs(60));
    let at = a.local_addr();
    assert_eq!(post(at, "tcp@127.0.0.1:7001", &[]).status, 200);
    assert!(
        raw(at, "GET", PATH, &[])
            .header("X-Myrpc-Degraded")
            .is_none()
    );
    e.stop();
    wait_until("the front-end to notice", Duration::from_secs(10), || {
        raw(at, "GET", PATH, &[]).header("X-Myrpc-Degraded") == Some("etcd unreachable")
    });
    let r = raw(at, "GET", PATH, &[]);
    assert_eq!(r.header("X-Myrpc-Servers"), Some("tcp@127.0.0.1:7001"));
    let health = raw(at, "GET", "/healthz", &[]);
    assert_eq!(
        (health.status, health.text().trim()),
        (200, "degraded: etcd unreachable")
    );
    // A renewal of a known entry is answered; a new one waits.
    let renewed = post(at, "tcp@127.0.0.1:7001", &[]);
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    let new = post(at, "tcp@127.0.0.1:7002", &[]);
    assert_eq!(new.status, 503, "{}", new.text());
    assert!(new.header("Retry-After").is_some());
    assert!(new.text().contains("etcd"), "{}", new.text());
    assert_eq!(
        listing(at).1,
        ["tcp@127.0.0.1:7001"],
        "the refused write changed nothing"
    );
    // Longer than the front-end's lease: etcd forgot its claims meanwhile.
    thread::sleep(Duration::from_secs(3));
    e.restart(false);
    let back = Instant::now();
    wait_until("the front-end to recover", Duration::from_secs(15), || {
        raw(at, "GET", PATH, &[])
            .header("X-Myrpc-Degraded")
            .is_none()
            && post(at, "tcp@127.0.0.1:7002", &[]).status == 200
    });
    eprintln!(
        "etcd back after an outage longer than the front-end's lease: registrations taken again {:?} after etcd was healthy",
        back.elapsed()
    );
    assert_eq!(listing(at).1, ["tcp@127.0.0.1:7001", "tcp@127.0.0.1:7002"]);
    assert_eq!(raw(at, "GET", "/healthz", &[]).text().trim(), "ok");
    assert!(
        raw(at, "GET", "/metrics", &[])
            .text()
            .contains("\nregcenter_etcd_up 1\n")
    );
    // The entry it kept renewing was claimed again under its new lease.
    wait_until("the claim written again", Duration::from_secs(10), || {
        e.range("/regcenter.claims/").len() == 2
    });
    a.shutdown().unwrap();
}

#[test]
fn with_one_etcd_member_down_nothing_changes() {
    let Some(mut e) = Cluster::start(3) else {
        return;
    };
    let (a, b) = fronts(&e);
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7001", &[]).status, 200);
    // The first member: where both front-ends' calls and watches go first.
    e.stop_member(0, true);
    for n in 2..6 {
        let addr = format!("tcp@127.0.0.1:700{n}");
        let r = post(a.local_addr(), &addr, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        wait_until(
            "the other front-end to list it",
            Duration::from_secs(10),
            || listing(b.local_addr()).1.contains(&addr),
        );
        assert!(
            raw(b.local_addr(), "GET", PATH, &[])
                .header("X-Myrpc-Degraded")
                .is_none()
        );
    }
    assert_eq!(post(b.local_addr(), "tcp@127.0.0.1:7001", &[]).status, 200);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn serve_with_etcd_refuses_bad_settings_and_an_unreachable_etcd() {
    use crate::common::process::regcenter;
    let out = regcenter(&[
        "serve",
        "--etcd",
        "http://127.0.0.1:9",
        "--snapshot",
        "/tmp/x",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = regcenter(&["serve", "--etcd-prefix", "/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--etcd-prefix needs --etcd"));
    let out = regcenter(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--etcd",
        "http://127.0.0.1:9",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn after_etcd_loses_its_data_front_ends_put_back_what_beats_and_follow_again() {
    let Some(mut e) = etcd::start() else { return };
    let a = front(&e, Duration::from_secs(60));
    let at = a.local_addr();
    for n in 1..=5 {
        assert_eq!(post(at, &format!("tcp@127.0.0.1:700{n}"), &[]).status, 200);
    }
    let before = listing(at).0;
    e.restart(true);
    let back = Instant::now();
    // The server keeps beating here: it is put back into the new etcd.
    wait_until(
        "the entry put back into etcd",
        Duration::from_secs(15),
        || {
            // 503 while the front-end waits for etcd to answer again.
            let status = post(at, "tcp@127.0.0.1:7001", &[]).status;
            assert!(status == 200 || status == 503, "{status}");
            e.range("/regcenter/")
                .iter()
                .any(|(k, _)| k.ends_with("7001"))
        },
    );
    // And what others register through the new etcd is followed.
    let lib = EtcdRegistration::builder(&[&e.url()], "tcp@127.0.0.1:7100")
        .start()
        .unwrap();
    wait_until(
        "a registration in the new etcd",
        Duration::from_secs(10),
        || listing(at).1.contains(&"tcp@127.0.0.1:7100".to_string()),
    );
    assert!(listing(at).0 >= before, "indexes do not go back");
    eprintln!(
        "etcd lost its data: a beating server back in etcd and a new registration served {:?} after etcd was healthy",
        back.elapsed()
    );
    lib.stop().unwrap();
    a.shutdown().unwrap();
}

#[test]
fn a_watch_whose_history_was_compacted_reads_the_table_again() {
    use crate::common::proxy::{Fault, Proxy};
    let Some(e) = etcd::start() else { return };
    let member: SocketAddr = e.url().trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(member);
    let a = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_secs(60))
        .threads(2)
        .etcd(&[&format!("http://{}", proxy.addr())])
        .start()
        .unwrap();
    let at = a.local_addr();
    assert_eq!(post(at, "tcp@127.0.0.1:7001", &[]).status, 200);
    // The front-end is cut off; meanwhile the table changes and etcd's
    // history is compacted past what it applied.
    proxy.set(Fault::Stall);
    wait_until("the front-end to notice", Duration::from_secs(10), || {
        raw(at, "GET", PATH, &[])
            .header("X-Myrpc-Degraded")
            .is_some()
    });
    let lib = EtcdRegistration::builder(&[&e.url()], "tcp@127.0.0.1:7100")
        .ttl(Duration::from_secs(60))
        .start()
        .unwrap();
    let gone = EtcdRegistration::builder(&[&e.url()], "tcp@127.0.0.1:7101")
        .start()
        .unwrap();
    gone.stop().unwrap();
    e.compact(e.revision());
    proxy.set(Fault::Pass);
    let healed = Instant::now();
    wait_until(
        "the change at the front-end",
        Duration::from_secs(20),
        || listing(at).1 == ["tcp@127.0.0.1:7001", "tcp@127.0.0.1:7100"],
    );
    eprintln!(
        "a watch whose history was compacted: the table read again and served {:?} after etcd could be reached",
        healed.elapsed()
    );
    lib.stop().unwrap();
    a.shutdown().unwrap();
}

#[test]
fn register_with_also_beats_to_every_front_end() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = (
        front(&e, Duration::from_secs(3)),
        front(&e, Duration::from_secs(3)),
    );
    let mut sidecar = Process::spawn(
        &[
            "register",
            "--addr",
            "tcp@127.0.0.1:7001",
            "--registry",
            a.url(),
            "--also",
            b.url(),
        ],
        &[],
    );
    // Each front-end hears it: each writes its claim.
    wait_until(
        "a claim from each front-end",
        Duration::from_secs(10),
        || e.range("/regcenter.claims/").len() == 2,
    );
    assert_eq!(listing(b.local_addr()).1, ["tcp@127.0.0.1:7001"]);
    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait(Duration::from_secs(10)).success());
    wait_until(
        "the deregistration everywhere",
        Duration::from_secs(5),
        || listing(a.local_addr()).1.is_empty() && listing(b.local_addr()).1.is_empty(),
    );
    let out = crate::common::process::regcenter(&[
        "register",
        "--addr",
        "tcp@127.0.0.1:7001",
        "--etcd",
        &e.url(),
        "--also",
        a.url(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_heartbeat_renews_over_udp_and_drains_through_front_ends() {
    let Some(e) = etcd::start() else { return };
    let (a, b) = fronts(&e);
    let hb = regcenter::Heartbeat::builder(a.url(), "tcp@127.0.0.1:7001")
        .also(b.url())
        .ttl(Duration::from_secs(1))
        .start()
        .unwrap();
    let udp_renewed = |s: &RegistryServer| -> u64 {
        let m = raw(s.local_addr(), "GET", "/metrics", &[]).text();
        m.lines()
            .find_map(|l| l.strip_prefix("regcenter_udp_datagrams_total{result=\"renewed\"} "))
            .map_or(0, |v| v.parse().unwrap())
    };
    wait_until(
        "UDP renewals at both front-ends",
        Duration::from_secs(10),
        || udp_renewed(&a) >= 2 && udp_renewed(&b) >= 2,
    );
    let before = e.revision();
    let beats = hb.beats();
    wait_until("six more beats", Duration::from_secs(10), || {
        hb.beats() >= beats + 6
    });
    assert_eq!(e.revision(), before, "UDP renewals wrote to etcd");
    // A drain is a change: written once, served by every front-end.
    hb.drain().unwrap();
    for s in [&a, &b] {
        let json = raw(s.local_addr(), "GET", &format!("{PATH}?format=json"), &[]).json();
        assert_eq!(json["servers"][0]["status"], "draining", "{json}");
        assert_eq!(
            raw(s.local_addr(), "GET", PATH, &[]).header("X-Myrpc-Servers"),
            Some("")
        );
    }
    let drained = e.revision();
    let beats = hb.beats();
    wait_until("six beats while draining", Duration::from_secs(10), || {
        hb.beats() >= beats + 6
    });
    assert_eq!(
        e.revision(),
        drained,
        "beats keep the drain without writing it again"
    );
    hb.stop().unwrap();
    assert!(listing(b.local_addr()).1.is_empty());
    assert!(e.range("/regcenter").is_empty());
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_paused_etcd_member_is_left_for_the_others() {
    let Some(e) = Cluster::start(3) else { return };
    let (a, b) = fronts(&e);
    assert_eq!(post(a.local_addr(), "tcp@127.0.0.1:7001", &[]).status, 200);
    // The member both front-ends call and watch first stops answering,
    // without closing a connection.
    e.pause_member(0, true);
    let paused = Instant::now();
    let mut took = Vec::new();
    for n in 2..5 {
        let addr = format!("tcp@127.0.0.1:700{n}");
        let t = Instant::now();
        let r = post(a.local_addr(), &addr, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        wait_until(
            "the other front-end to list it",
            Duration::from_secs(15),
            || listing(b.local_addr()).1.contains(&addr),
        );
        took.push(t.elapsed());
    }
    eprintln!(
        "with the first etcd member paused: registered and listed at the other front-end in {took:?} ({:?} after the pause)",
        paused.elapsed()
    );
    assert!(
        raw(b.local_addr(), "GET", PATH, &[])
            .header("X-Myrpc-Degraded")
            .is_none()
    );
    e.pause_member(0, false);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
}

#[test]
fn a_front_end_keeps_the_token_the_status_page_and_the_metrics() {
    let Some(e) = etcd::start() else { return };
    let a = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_secs(60))
        .threads(2)
        .token("s3cret-token-of-the-registry")
        .etcd(&[&e.url()])
        .start()
        .unwrap();
    let at = a.local_addr();
    let refused = post(at, "tcp@127.0.0.1:7001", &[]);
    assert_eq!(refused.status, 401);
    assert!(
        e.range("/regcenter").is_empty(),
        "a refused write reached etcd"
    );
    let auth = [("Authorization", "Bearer s3cret-token-of-the-registry")];
    assert_eq!(post(at, "tcp@127.0.0.1:7001", &auth).status, 200);
    let page = raw(at, "GET", "/", &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("tcp@127.0.0.1:7001"),
        "{}",
        page.text()
    );
    let metrics = raw(at, "GET", "/metrics", &[]).text();
    let revision = e.revision();
    assert!(
        metrics.contains(&format!("\nregcenter_etcd_revision {revision}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nregcenter_registrations_total 1\n"),
        "{metrics}"
    );
    a.shutdown().unwrap();
}
