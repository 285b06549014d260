//! Hostile persistence: crashes at random moments, damaged snapshot files,
//! and files planted next to the snapshot. Acknowledged changes older than
//! one snapshot interval survive, indexes never go backwards, and the
//! snapshot is never destroyed or redirected.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use regcenter::{Error, RegistryServer};

use crate::common::process::Process;
use crate::common::{Raw, parse, temp_dir, threads_named, wait_until};

const P: &str = "/myRPC/registry";

/// One request (`Connection: close`), `None` when the registry is gone
/// before it answered.
fn try_raw(at: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Option<Raw> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| parse(&buf))
}

fn wall() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Register,
    Deregister,
}

/// One operation the writer sent, with the wall-clock nanoseconds it was
/// acknowledged at.
#[derive(Debug, Clone)]
struct Op {
    kind: Kind,
    addr: String,
    acked: Option<u128>,
}

/// Registers new addresses and deregisters alive ones until `stop` or
/// until the registry is gone; records every operation and every index it
/// saw.
fn writer(
    at: SocketAddr,
    mut alive: Vec<String>,
    first: usize,
    mut rng: u64,
    stop: &AtomicBool,
    ops: &Mutex<Vec<Op>>,
    seen: &Mutex<Vec<u64>>,
) {
    let mut next = first;
    let mut roll = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    // Bounded: the test stops it long before.
    for _ in 0..100_000 {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let deregister = !alive.is_empty() && (alive.len() > 40 || roll(2) == 0);
        let (kind, addr) = if deregister {
            let i = roll(alive.len() as u64) as usize;
            (Kind::Deregister, alive.swap_remove(i))
        } else {
            next += 1;
            (Kind::Register, format!("tcp@w{next}:1"))
        };
        let at_op = {
            let mut o = ops.lock();
            o.push(Op {
                kind,
                addr: addr.clone(),
                acked: None,
            });
            o.len() - 1
        };
        let method = if deregister { "DELETE" } else { "POST" };
        let headers = [("X-Myrpc-Server", addr.as_str()), ("X-Myrpc-Ttl", "1h")];
        let Some(r) = try_raw(at, method, P, &headers) else {
            return;
        };
        assert_eq!(r.status, 200, "{method} {addr}: {}", r.text());
        ops.lock()[at_op].acked = Some(wall());
        if let Some(i) = r.header("X-Myrpc-Index") {
            seen.lock().push(i.parse().unwrap());
        }
        if !deregister {
            alive.push(addr);
        }
        let Some(r) = try_raw(at, "GET", &format!("{P}?format=text"), &[]) else {
            return;
        };
        seen.lock()
            .push(r.header("X-Myrpc-Index").unwrap().parse().unwrap());
    }
}

/// The alive addresses and the index of the default service.
fn listing(at: SocketAddr) -> (BTreeSet<String>, u64) {
    let r = try_raw(at, "GET", &format!("{P}?format=text"), &[]).expect("the listing");
    assert_eq!(r.status, 200);
    let index = r.header("X-Myrpc-Index").unwrap().parse().unwrap();
    (r.text().lines().map(str::to_string).collect(), index)
}

#[test]
fn kill_9_at_random_moments_loses_no_old_change_and_no_index_goes_backwards() {
    const INTERVAL: Duration = Duration::from_millis(200);
    // A write also takes time (fsync on a busy disk): the snapshot on disk
    // at a kill is at most one interval and this much older.
    const WRITE_ALLOWANCE: Duration = Duration::from_secs(3);
    let dir = temp_dir("kill9");
    let file = dir.join("table");
    let args = [
        "--snapshot",
        file.to_str().unwrap(),
        "--snapshot-interval",
        "200ms",
    ];
    let seed = (wall() as u64) | 1;
    let mut rng = seed;
    let mut roll = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut p, mut at) = Process::serve(&args);
    let mut alive: BTreeSet<String> = BTreeSet::new();
    let mut highest = 0u64; // the highest index any earlier run answered
    let mut next = 0;
    let mut checked = 0; // registrations the snapshot had to hold
    for round in 0..10 {
        let ctx = format!("seed {seed} round {round}");
        let (stop, ops, seen) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::<Op>::new())),
            Arc::new(Mutex::new(Vec::<u64>::new())),
        );
        let w = {
            let (stop, ops, seen) = (stop.clone(), ops.clone(), seen.clone());
            let alive: Vec<String> = alive.iter().cloned().collect();
            let rng = roll(u64::MAX) | 1;
            std::thread::Builder::new()
                .name("test-writer".into())
                .spawn(move || writer(at, alive, next, rng, &stop, &ops, &seen))
                .unwrap()
        };
        // The kill lands after a random number of acknowledged operations,
        // while the writer keeps going: at a random point of its traffic
        // and of the snapshot schedule.
        let target = roll(1500) as usize;
        wait_until("the writer's operations", Duration::from_secs(30), || {
            ops.lock().iter().filter(|o| o.acked.is_some()).count() >= target || w.is_finished()
        });
        p.signal(libc::SIGKILL);
        let killed = wall();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&p.wait(Duration::from_secs(20))),
            Some(libc::SIGKILL),
            "{ctx}"
        );
        stop.store(true, Ordering::Release);
        w.join().unwrap();
        let ops = std::mem::take(&mut *ops.lock());
        let seen = std::mem::take(&mut *seen.lock());
        next += ops.iter().filter(|o| o.kind == Kind::Register).count();

        // What the snapshot on disk holds is what the registry held when it
        // was written: every change acknowledged before then is in it.
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{ctx}: no snapshot after the kill: {e}"));
        let written: u128 = text
            .lines()
            .find_map(|l| l.strip_prefix("written "))
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no written line in {text}"));
        let written = written * 1_000_000;
        assert!(
            killed.saturating_sub(written) < (INTERVAL + WRITE_ALLOWANCE).as_nanos(),
            "{ctx}: the snapshot was {} ms old at the kill",
            killed.saturating_sub(written) / 1_000_000
        );

        (p, at) = Process::serve(&args);
        let (back, index) = listing(at);
        let touched: HashSet<&str> = ops
            .iter()
            .filter(|o| o.kind == Kind::Deregister)
            .map(|o| o.addr.as_str())
            .collect();
        for a in &alive {
            if !touched.contains(a.as_str()) {
                assert!(
                    back.contains(a),
                    "{ctx}: {a}, alive since an earlier run, is lost"
                );
            }
        }
        for o in &ops {
            let Some(acked) = o.acked.filter(|&t| t < written) else {
                continue;
            };
            match o.kind {
                Kind::Register if !touched.contains(o.addr.as_str()) => {
                    assert!(
                        back.contains(&o.addr),
                        "{ctx}: {} registered {} ms before the snapshot is lost",
                        o.addr,
                        (written - acked) / 1_000_000
                    );
                    checked += 1;
                }
                Kind::Register => {}
                Kind::Deregister => assert!(
                    !back.contains(&o.addr),
                    "{ctx}: {} deregistered {} ms before the snapshot is back",
                    o.addr,
                    (written - acked) / 1_000_000
                ),
            }
        }
        highest = highest.max(seen.iter().copied().max().unwrap_or(0));
        assert!(
            index > highest,
            "{ctx}: index {index} after the restart, {highest} seen before the kill"
        );
        highest = index;
        alive = back;
    }
    assert!(
        checked > 0,
        "seed {seed}: every kill came before a snapshot"
    );
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A snapshot that is valid but for one byte that is not UTF-8.
fn unreadable_snapshot() -> Vec<u8> {
    let mut bytes =
        b"regcenter-snapshot 1\ncounter 1000\nwritten 1000\nsvc\ttcp@a:1\t1\t0\t-\tzone=".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"\nend 1\n");
    bytes
}

fn corrupt_path(file: &Path) -> std::path::PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".corrupt");
    s.into()
}

#[test]
fn an_unreadable_snapshot_is_kept_aside_and_never_overwritten() {
    let dir = temp_dir("unreadable");
    let file = dir.join("table");
    let bytes = unreadable_snapshot();
    std::fs::write(&file, &bytes).unwrap();
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .snapshot(&file)
        .snapshot_interval(Duration::from_millis(20))
        .start()
        .unwrap();
    let aside = corrupt_path(&file);
    assert_eq!(
        std::fs::read(&aside).ok().as_deref(),
        Some(&bytes[..]),
        "kept aside as table.corrupt"
    );
    assert!(s.registry().is_empty());
    assert!(
        s.registry().counter() >= 1000 + (1 << 40),
        "the counter starts past the one in the unreadable file, and past \
         what a crash could have lost: {}",
        s.registry().counter()
    );
    // The table is written again (empty, as it really is); the copy aside
    // stays as it was.
    wait_until("a periodic write", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("end 0"))
    });
    s.shutdown().unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_that_cannot_be_set_aside_stops_the_start() {
    let dir = temp_dir("no-aside");
    let file = dir.join("table");
    let bytes = unreadable_snapshot();
    std::fs::write(&file, &bytes).unwrap();
    // A non-empty directory where the copy would go: rename(2) cannot
    // replace it.
    let aside = corrupt_path(&file);
    std::fs::create_dir(&aside).unwrap();
    std::fs::write(aside.join("keep"), "x").unwrap();
    let port = super::free_port();
    let r = RegistryServer::builder()
        .addr(format!("127.0.0.1:{port}"))
        .threads(2)
        .snapshot(&file)
        .start();
    assert!(
        matches!(
            r,
            Err(Error::InvalidConfig {
                setting: "snapshot",
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(threads_named(&format!("rc{port}-")), 0);
    TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");
    // The binary refuses it the same way.
    let mut p = Process::spawn(
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--snapshot",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let code = p.wait(Duration::from_secs(20)).code();
    assert_eq!(code, Some(2), "{}", p.stderr());
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_planted_temporary_file_is_never_written_through() {
    let dir = temp_dir("planted-tmp");
    let file = dir.join("table");
    let victim = dir.join("victim");
    let tmp = dir.join("table.tmp");
    std::fs::write(&victim, "precious").unwrap();
    type Plant = fn(&Path, &Path);
    let plants: [(&str, Plant); 3] = [
        ("a symlink", |v, t| {
            std::os::unix::fs::symlink(v, t).unwrap()
        }),
        ("a hard link", |v, t| std::fs::hard_link(v, t).unwrap()),
        ("a dangling symlink", |v, t| {
            std::os::unix::fs::symlink(v.with_file_name("nowhere"), t).unwrap()
        }),
    ];
    for (what, plant) in plants {
        plant(&victim, &tmp);
        let s = RegistryServer::builder()
            .addr("127.0.0.1:0")
            .threads(2)
            .snapshot(&file)
            .start()
            .unwrap();
        crate::common::put_for_a_minute(s.registry(), "", "tcp@a:1");
        s.shutdown().unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious",
            "{what}"
        );
        assert!(
            !dir.join("nowhere").exists(),
            "{what}: created through the link"
        );
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.is_file(), "{what}: the snapshot is a plain file");
        assert!(
            std::fs::read_to_string(&file).unwrap().contains("tcp@a:1"),
            "{what}"
        );
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "{what}: no tmp left"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
