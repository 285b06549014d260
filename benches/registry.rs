//! In-process costs of the registry table: renewal, registration, listing.
//!
//! `cargo bench --bench registry`; `REGCENTER_BENCH_LONG=1` runs ten times
//! longer. Prints operations per second and nanoseconds per operation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use regcenter::Registry;

fn main() {
    memory();
    heartbeats_during_rebuilds();
    let long = std::env::var_os("REGCENTER_BENCH_LONG").is_some();
    let budget = Duration::from_millis(if long { 2000 } else { 200 });
    println!(
        "{:<28} {:>9} {:>14} {:>10}",
        "operation", "entries", "ops/s", "ns/op"
    );
    for &n in &[100usize, 10_000, 100_000] {
        let reg = Registry::builder()
            .max_entries(1_000_000)
            .build()
            .expect("valid settings");
        let addrs: Vec<String> = (0..n)
            .map(|i| format!("tcp@10.{}.{}.{}:7001", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        for a in &addrs {
            reg.put("bench", a).expect("put");
        }
        report("renew existing entry", n, budget, |i| {
            black_box(reg.put("bench", &addrs[i % n]).expect("renew"));
        });
        // Heartbeats arrive in no particular order: the same renewals in a
        // fixed shuffled order, so neither the table nor the addresses are
        // walked in the order they were stored.
        let in_shuffled_order = shuffled(&addrs);
        report("renew, shuffled order", n, budget, |i| {
            black_box(reg.put("bench", &in_shuffled_order[i % n]).expect("renew"));
        });
        // Host names do not pack: their text lives apart from the slot.
        let hosts: Vec<String> = (0..n)
            .map(|i| format!("tcp@node-{i}.svc.cluster.local:7001"))
            .collect();
        for h in &hosts {
            reg.put("hosts", h).expect("put");
        }
        let hosts = shuffled(&hosts);
        report("renew host name, shuffled", n, budget, |i| {
            black_box(reg.put("hosts", &hosts[i % n]).expect("renew"));
        });
        report("listing (shared)", n, budget, |_| {
            black_box(reg.listing("bench"));
        });
        let fresh = Registry::builder()
            .max_entries(10_000_000)
            .build()
            .expect("valid settings");
        let mut next = 0usize;
        report("register new entry", n, budget, |_| {
            next += 1;
            black_box(
                fresh
                    .put(
                        "bench",
                        &format!(
                            "tcp@10.{}.{}.{}:{}",
                            (next >> 16) & 255,
                            (next >> 8) & 255,
                            next & 255,
                            7001 + (next >> 24)
                        ),
                    )
                    .expect("register"),
            );
        });
    }
}

/// A copy of `addrs` in a shuffled order (fixed seed, xorshift): each
/// string is copied in that order too, so consecutive addresses do not sit
/// side by side in memory.
fn shuffled(addrs: &[String]) -> Vec<String> {
    let mut order: Vec<usize> = (0..addrs.len()).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order.into_iter().map(|i| addrs[i].clone()).collect()
}

/// Runs `op` in batches until `budget` is spent; prints the rate.
fn report(name: &str, entries: usize, budget: Duration, mut op: impl FnMut(usize)) {
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            op(done);
            done += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<28} {entries:>9} {:>14.0} {:>10.1}",
        done as f64 / secs,
        secs * 1e9 / done as f64
    );
}

/// How long a heartbeat waits for the table lock while another thread
/// changes a 100 000-entry service and reads its text and JSON listings
/// (rebuilt after every change): the rebuilds must not hold the lock.
fn heartbeats_during_rebuilds() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = 100_000;
    let reg = Registry::builder()
        .max_entries(1_000_000)
        .build()
        .expect("valid settings");
    for i in 0..n {
        let addr = format!("tcp@10.{}.{}.{}:7001", i >> 16, (i >> 8) & 255, i & 255);
        reg.put("bench", &addr).expect("put");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let beats = {
        let (reg, stop) = (reg.clone(), stop.clone());
        std::thread::spawn(move || {
            // Powers of two of nanoseconds: millions of beats in 64 counters.
            let mut log2 = [0u64; 64];
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                black_box(reg.put("bench", "tcp@10.0.0.1:7001").expect("renew"));
                let wait = start.elapsed();
                worst = worst.max(wait);
                log2[64 - (wait.as_nanos() as u64).leading_zeros() as usize % 64] += 1;
            }
            (log2, worst)
        })
    };
    let start = Instant::now();
    let rounds = 10;
    for k in 0..rounds {
        reg.put("bench", &format!("tcp@11.0.0.{k}:7001"))
            .expect("register");
        black_box(reg.listing("bench"));
        black_box(reg.instances("bench"));
    }
    let per_round = start.elapsed() / rounds;
    stop.store(true, Ordering::Relaxed);
    let (log2, worst) = beats.join().expect("heartbeat thread");
    let total: u64 = log2.iter().sum();
    let mut seen = 0;
    let p99 = log2
        .iter()
        .position(|&c| {
            seen += c;
            seen * 100 >= total * 99
        })
        .map_or(0, |b| 1u64 << b);
    println!(
        "heartbeats while 100000 entries change and are listed ({per_round:.1?} a round): \
         {total} beats, p99 under {p99} ns, worst {worst:.1?}\n"
    );
}

/// Resident memory of 100 000 entries, listing rendered: the difference in
/// `VmRSS` before and after filling a registry.
fn memory() {
    let before = rss_kib();
    let reg = Registry::builder()
        .max_entries(1_000_000)
        .build()
        .expect("valid settings");
    for i in 0..100_000 {
        reg.put(
            "bench",
            &format!("tcp@10.{}.{}.{}:7001", i >> 16, (i >> 8) & 255, i & 255),
        )
        .expect("put");
    }
    black_box(reg.listing("bench"));
    let after = rss_kib();
    println!(
        "memory: 100000 entries take {:.1} MB resident ({:.0} bytes each)\n",
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / 100_000.0
    );
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
