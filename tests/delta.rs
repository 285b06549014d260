//! Delta long-polls over loopback: every delta applied to the list before
//! it gives exactly the full listing at the same index (through random
//! changes, change-log overflow and restarts), and a watching discovery
//! uses deltas and still ends with exactly the registry's list.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regcenter::{
    Discovery, ManualClock, PutOptions, Registry, RegistryDiscovery, RegistryServer, Status,
};
use serde_json::Value;

use crate::common::{raw, wait_until};
use crate::json_standin::{JsonRegistry, listing, up};

const P: &str = "/myRPC/registry";
const SVC: &str = "svc";
/// The most records a service's change log keeps (docs/PERFORMANCE.md).
const LOG_LIMIT: usize = 256;
const LONG: Duration = Duration::from_secs(60);

/// A server as a listing shows it, without `expires_in_ms` (renewals move
/// it without a change).
type Row = (String, u64, String, BTreeMap<String, String>);

fn row(v: &Value) -> Row {
    let meta = v["meta"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    (
        v["addr"].as_str().unwrap().to_string(),
        v["weight"].as_u64().unwrap(),
        v["status"].as_str().unwrap().to_string(),
        meta,
    )
}

fn rows(v: &Value) -> Vec<Row> {
    v.as_array().unwrap().iter().map(row).collect()
}

fn get(addr: SocketAddr, query: &str) -> Value {
    let r = raw(addr, "GET", &format!("{P}/{SVC}?format=json{query}"), &[]);
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()
}

/// `list` with the delta `d` applied, failing the test where it does not
/// apply cleanly.
fn apply(list: &[Row], d: &Value) -> Vec<Row> {
    let mut map: BTreeMap<String, Row> = list.iter().map(|r| (r.0.clone(), r.clone())).collect();
    for a in d["removed"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        assert!(
            map.remove(a).is_some(),
            "removed {a} that was not there: {d}"
        );
    }
    for r in rows(&d["changed"]) {
        assert!(
            map.insert(r.0.clone(), r.clone()).is_some(),
            "changed {} that was not there: {d}",
            r.0
        );
    }
    for r in rows(&d["added"]) {
        assert!(
            map.insert(r.0.clone(), r.clone()).is_none(),
            "added {} that was there: {d}",
            r.0
        );
    }
    map.into_values().collect()
}

/// A small deterministic generator (xorshift), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What each address was last registered with.
type Model = BTreeMap<String, PutOptions>;

fn random_opts(rng: &mut Rng, ttl: Duration) -> PutOptions {
    let mut o = PutOptions::new()
        .ttl(ttl)
        .weight(1 + rng.below(3) as u32)
        .status(if rng.below(5) == 0 {
            Status::Draining
        } else {
            Status::Up
        });
    if rng.below(2) == 0 {
        o = o.meta("zone", ["eu", "us"][rng.below(2) as usize]);
    }
    o
}

/// One random change (or a renewal, which is none) to the registry.
fn random_step(rng: &mut Rng, reg: &Registry, model: &mut Model, next: &mut u32) {
    let addrs: Vec<String> = model.keys().cloned().collect();
    let pick = |rng: &mut Rng| addrs[rng.below(addrs.len() as u64) as usize].clone();
    match rng.below(10) {
        0..=2 => {
            *next += 1;
            let a = format!("tcp@10.0.{}.{}:7001", *next / 250, *next % 250);
            let o = random_opts(rng, LONG);
            reg.put_with(SVC, &a, &o).unwrap();
            model.insert(a, o);
        }
        3 | 4 if !addrs.is_empty() => {
            let a = pick(rng);
            let o = random_opts(rng, LONG);
            reg.put_with(SVC, &a, &o).unwrap();
            model.insert(a, o);
        }
        5 | 6 if !addrs.is_empty() => {
            let a = pick(rng);
            reg.put_with(SVC, &a, &model[&a]).unwrap(); // a renewal
        }
        7 | 8 if addrs.len() > 1 => {
            let a = pick(rng);
            assert!(reg.remove(SVC, &a).unwrap());
            model.remove(&a);
        }
        _ => {}
    }
}

/// Asks for the changes since `index` and compares the list they give
/// with the full listing right after (nothing changes in between).
/// Returns the new list and index, and whether the answer was a delta.
fn step_watch(addr: SocketAddr, list: &[Row], index: u64) -> (Vec<Row>, u64, bool) {
    let d = get(addr, &format!("&index={index}&wait=0s&delta=1"));
    let full = get(addr, "");
    let (after, is_delta) = match d["delta"].as_bool() {
        Some(true) => {
            assert_eq!(d["since"].as_u64(), Some(index), "{d}");
            assert!(d.get("servers").is_none(), "{d}");
            (apply(list, &d), true)
        }
        Some(false) => (rows(&d["servers"]), false),
        None => panic!("a delta request is answered without \"delta\": {d}"),
    };
    assert_eq!(d["index"], full["index"], "{d}\n{full}");
    assert_eq!(after, rows(&full["servers"]), "delta {d}\nfull {full}");
    (after, full["index"].as_u64().unwrap(), is_delta)
}

/// A registry on a manual clock, served, past its recovery (it started
/// without a snapshot: deltas wait for the recovery to end).
fn served(clock: &ManualClock) -> (Registry, RegistryServer) {
    let reg = Registry::builder()
        .clock(clock.clone())
        .default_ttl(LONG)
        .max_ttl(LONG)
        .build()
        .unwrap();
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .registry(reg.clone())
        .start()
        .unwrap();
    clock.advance(LONG);
    assert!(!reg.recovering());
    (reg, server)
}

/// A registry restored from a snapshot, served: it is not recovering, so
/// it answers deltas from its start.
fn restored() -> (Registry, RegistryServer) {
    let reg = Registry::builder().default_ttl(LONG).build().unwrap();
    reg.restore(&Registry::new().snapshot()).unwrap();
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .registry(reg.clone())
        .start()
        .unwrap();
    (reg, server)
}

#[test]
fn every_delta_applied_to_the_list_before_gives_the_full_listing_at_its_index() {
    let clock = ManualClock::new();
    let (reg, server) = served(&clock);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model = Model::new();
    let mut next = 0;
    let mut addr = server.local_addr();
    let first = get(addr, "");
    let (mut list, mut index) = (rows(&first["servers"]), first["index"].as_u64().unwrap());
    let (mut deltas, mut fulls) = (0, 0);
    for round in 0..300 {
        for _ in 0..1 + rng.below(6) {
            random_step(&mut rng, &reg, &mut model, &mut next);
        }
        if round % 7 == 3 {
            // A few entries that expire on their own.
            for _ in 0..1 + rng.below(3) {
                next += 1;
                let a = format!("tcp@10.1.{}.{}:7001", next / 250, next % 250);
                let o = PutOptions::new().ttl(Duration::from_secs(1));
                reg.put_with(SVC, &a, &o).unwrap();
            }
            let _ = step_watch(addr, &list, index);
            clock.advance(Duration::from_secs(1));
            for (a, o) in &model {
                reg.put_with(SVC, a, o).unwrap(); // renewals: kept alive
            }
        }
        if round % 50 == 49 {
            // More changes than the log holds: the next answer is full.
            let a = model.keys().next().unwrap().clone();
            for i in 0..2 * LOG_LIMIT {
                let o = model[&a].clone().weight(1 + (i % 2) as u32);
                reg.put_with(SVC, &a, &o).unwrap();
                model.insert(a.clone(), o);
            }
            let (l, n, is_delta) = step_watch(addr, &list, index);
            assert!(!is_delta, "answered a delta across an overflow");
            fulls += 1;
            (list, index) = (l, n);
        }
        let (l, n, is_delta) = step_watch(addr, &list, index);
        match is_delta {
            true => deltas += 1,
            false => fulls += 1,
        }
        (list, index) = (l, n);
        if round == 150 {
            // A restart from a snapshot: the first answer to an index from
            // before is full, the next ones are deltas again.
            let snapshot = reg.snapshot();
            server.shutdown().unwrap();
            let (reg2, server2) = served(&clock);
            reg2.restore(&snapshot).unwrap();
            let (l, n, is_delta) = step_watch(server2.local_addr(), &list, index);
            assert!(!is_delta, "answered a delta across a restart");
            (list, index) = (l, n);
            // Back to work on the restored registry.
            return finish(reg2, server2, rng, model, next, list, index, deltas, fulls);
        }
        addr = server.local_addr();
    }
    unreachable!("the restart returns");
}

#[allow(clippy::too_many_arguments)]
fn finish(
    reg: Registry,
    server: RegistryServer,
    mut rng: Rng,
    mut model: Model,
    mut next: u32,
    mut list: Vec<Row>,
    mut index: u64,
    mut deltas: usize,
    fulls: usize,
) {
    let addr = server.local_addr();
    for _ in 0..100 {
        for _ in 0..1 + rng.below(6) {
            random_step(&mut rng, &reg, &mut model, &mut next);
        }
        let (l, n, is_delta) = step_watch(addr, &list, index);
        deltas += usize::from(is_delta);
        (list, index) = (l, n);
    }
    // Full: the first answer (the service did not exist), one after each
    // overflow, the one after the restart.
    assert!(
        deltas >= 240 && fulls >= 4,
        "deltas {deltas}, full answers {fulls}"
    );
    // A restart without a snapshot (the index is beyond the new counter,
    // and the registry recovers): full.
    server.shutdown().unwrap();
    let fresh = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .start()
        .unwrap();
    fresh.registry().put(SVC, "tcp@10.9.9.9:7001").unwrap();
    let d = get(
        fresh.local_addr(),
        &format!("&index={index}&wait=0s&delta=1"),
    );
    assert_eq!(d["delta"], false, "{d}");
    let one = (
        "tcp@10.9.9.9:7001".to_string(),
        1,
        "up".to_string(),
        BTreeMap::new(),
    );
    assert_eq!(rows(&d["servers"]), [one]);
}

/// A TCP relay in front of a registry that keeps every byte each way.
struct Recorder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// What clients sent, and what they were answered.
    seen: Arc<Mutex<(Vec<u8>, Vec<u8>)>>,
    acceptor: Option<JoinHandle<()>>,
}

/// How often a blocked read wakes to look at the stop flag.
const TICK: Duration = Duration::from_millis(20);

impl Recorder {
    fn start(upstream: SocketAddr) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let (st, sn) = (stop.clone(), seen.clone());
        let acceptor = thread::Builder::new()
            .name("test-recorder".into())
            .spawn(move || {
                let mut relays = Vec::new();
                // Bounded: a test opens a handful of connections.
                while !st.load(Ordering::Acquire) && relays.len() < 400 {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let server = TcpStream::connect(upstream).unwrap();
                            for (from, to, up) in [
                                (
                                    client.try_clone().unwrap(),
                                    server.try_clone().unwrap(),
                                    true,
                                ),
                                (server, client, false),
                            ] {
                                let (st, sn) = (st.clone(), sn.clone());
                                relays.push(
                                    thread::Builder::new()
                                        .name("test-recorder-relay".into())
                                        .spawn(move || relay(from, to, up, &st, &sn))
                                        .unwrap(),
                                );
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
                        Err(e) => panic!("accept: {e}"),
                    }
                }
                for r in relays {
                    r.join().unwrap();
                }
            })
            .unwrap();
        Recorder {
            addr,
            stop,
            seen,
            acceptor: Some(acceptor),
        }
    }

    fn url(&self) -> String {
        format!("http://{}{P}", self.addr)
    }

    /// The request lines clients sent.
    fn requests(&self) -> Vec<String> {
        let seen = self.seen.lock();
        String::from_utf8_lossy(&seen.0)
            .lines()
            .filter(|l| l.starts_with("GET "))
            .map(str::to_string)
            .collect()
    }

    /// Bytes answered so far.
    fn answered(&self) -> usize {
        self.seen.lock().1.len()
    }

    fn answers_containing(&self, what: &str) -> usize {
        String::from_utf8_lossy(&self.seen.lock().1)
            .matches(what)
            .count()
    }
}

/// Copies `from` to `to`, recording, until either side closes or `stop`.
fn relay(
    mut from: TcpStream,
    mut to: TcpStream,
    up: bool,
    stop: &AtomicBool,
    seen: &Mutex<(Vec<u8>, Vec<u8>)>,
) {
    from.set_read_timeout(Some(TICK)).unwrap();
    to.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 16 << 10];
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                {
                    let mut s = seen.lock();
                    let side = if up { &mut s.0 } else { &mut s.1 };
                    side.extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// The registry's JSON listing as rows.
fn registry_rows(reg: &Registry) -> Vec<(String, u32, Status, BTreeMap<String, String>)> {
    reg.instances(SVC)
        .1
        .into_iter()
        .map(|e| (e.addr, e.weight, e.status, e.meta))
        .collect()
}

fn discovered_rows(d: &RegistryDiscovery) -> Vec<(String, u32, Status, BTreeMap<String, String>)> {
    d.instances()
        .unwrap()
        .into_iter()
        .map(|i| {
            (
                i.addr().to_string(),
                i.weight(),
                i.status(),
                i.meta().clone(),
            )
        })
        .collect()
}

#[test]
fn a_watching_discovery_applies_deltas_and_ends_with_the_registrys_list() {
    let (reg, server) = restored();
    for i in 0..200 {
        reg.put_with(
            SVC,
            &format!("tcp@10.0.0.{i}:7001"),
            &PutOptions::new().ttl(LONG),
        )
        .unwrap();
    }
    let recorder = Recorder::start(server.local_addr());
    let d = RegistryDiscovery::builder(&recorder.url())
        .service(SVC)
        .watch(true)
        .watch_wait(Duration::from_secs(20))
        .build()
        .unwrap();
    let soon = Duration::from_secs(10);
    wait_until("the first list", soon, || d.index() == Some(reg.index(SVC)));
    let before = recorder.answered();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Removing an address that is not listed changes nothing: no poll.
    let mut changes = 0;
    for step in 0..30u32 {
        let was = reg.index(SVC);
        let a = format!("tcp@10.0.0.{}:7001", rng.below(220));
        match step % 3 {
            0 => {
                let _ = reg.remove(SVC, &a).unwrap();
            }
            1 => {
                let o = PutOptions::new()
                    .ttl(LONG)
                    .weight(1 + step % 4)
                    .meta("v", step.to_string());
                reg.put_with(SVC, &a, &o).unwrap();
            }
            _ => {
                let o = PutOptions::new().ttl(LONG).status(Status::Draining);
                reg.put_with(SVC, &a, &o).unwrap();
            }
        }
        let n = reg.index(SVC);
        changes += usize::from(n > was);
        wait_until("the discovery to see the change", soon, || {
            d.index().is_some_and(|i| i >= n)
        });
    }
    wait_until("the discovery to catch up", soon, || {
        d.index() == Some(reg.index(SVC))
    });
    assert_eq!(discovered_rows(&d), registry_rows(&reg));
    let polls = recorder.requests();
    let asked = polls.iter().filter(|r| r.contains("delta=1")).count();
    let deltas = recorder.answers_containing("\"delta\":true");
    assert!(
        changes >= 20,
        "only {changes} of the 30 steps changed the list"
    );
    assert!(
        asked >= changes,
        "long-polls asking delta=1: {asked} for {changes} changes, of {polls:#?}"
    );
    assert!(
        deltas + 5 >= changes,
        "delta answers: {deltas} for {changes} changes"
    );
    // The first request is a plain listing, without delta.
    assert!(!polls[0].contains("delta=1"), "{}", polls[0]);
    // 200 servers in full are about 20 KB a change; the deltas far less.
    let per_change = (recorder.answered() - before) / changes;
    assert!(per_change < 2_000, "{per_change} bytes answered per change");
    d.stop().unwrap();
}

#[test]
fn a_registry_that_answers_without_delta_is_followed_in_full() {
    // An older registry ignores delta=1 and answers listings.
    let reg = JsonRegistry::start(listing(5, &[&up("tcp@a:1"), &up("tcp@b:1")]));
    let d = RegistryDiscovery::builder(&reg.url())
        .watch(true)
        .watch_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let soon = Duration::from_secs(10);
    wait_until("the first list", soon, || d.index() == Some(5));
    reg.set(listing(9, &[&up("tcp@c:1")]));
    wait_until("the new list", soon, || d.index() == Some(9));
    assert_eq!(d.get_all().unwrap(), ["tcp@c:1"]);
    assert!(
        reg.requests().iter().any(|r| r.contains("delta=1")),
        "{:?}",
        reg.requests()
    );
    d.stop().unwrap();
}

#[test]
fn a_delta_that_does_not_start_from_the_list_is_not_applied() {
    let first = listing(5, &[&up("tcp@a:1"), &up("tcp@b:1")]);
    let reg = JsonRegistry::start(first.clone());
    let d = RegistryDiscovery::builder(&reg.url())
        .watch(true)
        .watch_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let soon = Duration::from_secs(10);
    wait_until("the first list", soon, || d.index() == Some(5));
    // A delta since another index than the list's (4, not 5): the
    // discovery asks for the full listing instead.
    let delta = |since: u64, index: u64, added: &str| crate::json_standin::Answer {
        index,
        body: format!(
            "{{\"service\":\"\",\"index\":{index},\"recovering\":false,\"delta\":true,\
             \"since\":{since},\"added\":[{added}],\"changed\":[],\"removed\":[]}}\n"
        ),
        headers: Vec::new(),
    };
    let asked = reg.requests().len();
    reg.set(delta(4, 7, &up("tcp@c:1")));
    wait_until("a full listing asked", soon, || {
        reg.requests()[asked..]
            .iter()
            .any(|r| !r.contains("index="))
    });
    // That one answered a delta too (this stand-in answers one thing to
    // all): refused, the list is kept.
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1"]);
    assert_eq!(d.index(), Some(5));
    // A delta from the list's index that applies cleanly is applied.
    reg.set(delta(5, 8, &up("tcp@c:1")));
    wait_until("the delta applied", soon, || d.index() == Some(8));
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1", "tcp@c:1"]);
    // One that adds what is there does not apply: full listing asked.
    let asked = reg.requests().len();
    reg.set(delta(8, 9, &up("tcp@a:1")));
    wait_until("a full listing asked", soon, || {
        reg.requests()[asked..]
            .iter()
            .any(|r| !r.contains("index="))
    });
    reg.set(listing(10, &[&up("tcp@z:1")]));
    wait_until("the full listing", soon, || d.index() == Some(10));
    assert_eq!(d.get_all().unwrap(), ["tcp@z:1"]);
    drop(first);
    d.stop().unwrap();
}
