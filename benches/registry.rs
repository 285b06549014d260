//! In-process costs of the registry table: renewal, registration, listing,
//! and how long a heartbeat waits while the table is busy.
//!
//! `cargo bench --bench registry`; `REGCENTER_BENCH_LONG=1` runs ten times
//! longer. Prints operations per second and nanoseconds per operation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use regcenter::{ManualClock, PutOptions, Registry};

fn main() {
    memory();
    heartbeats_during_table_work();
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

/// How long a heartbeat waits for the table lock while this thread works
/// on a 100 000-entry table: changes and rebuilt listings, snapshots, a
/// mass expiry (logged), renewals that each shorten a TTL (each moves its
/// entry's expiry item). None of it may hold the lock for long; the
/// "work" column is the time of one round.
fn heartbeats_during_table_work() {
    let n = 100_000;
    let addr = |i: usize| format!("tcp@10.{}.{}.{}:7001", i >> 16, (i >> 8) & 255, i & 255);
    let fill = |reg: &Registry, ttl: Duration| {
        let opts = PutOptions::new().ttl(ttl);
        for i in 0..n {
            reg.put_with("bench", &addr(i), &opts).expect("put");
        }
    };
    let hour = Duration::from_secs(3600);
    let built = |clock: &ManualClock| {
        Registry::builder()
            .max_entries(1_000_000)
            .clock(clock.clone())
            .build()
            .expect("valid settings")
    };
    println!(
        "{:<58} {:>9} {:>12} {:>10} {:>10}",
        "heartbeat wait (one entry renewed in a loop) while", "beats", "p99 under", "worst", "work"
    );
    let clock = ManualClock::new();
    let reg = built(&clock);
    fill(&reg, hour);
    let rounds = 10;
    let w = heartbeat_waits(&reg, rounds, |k| {
        reg.put("bench", &format!("tcp@11.0.0.{k}:7001"))
            .expect("register");
        black_box(reg.listing("bench"));
        black_box(reg.instances("bench"));
    });
    w.print("100000 entries change and are listed", rounds);
    let rounds = 5;
    let w = heartbeat_waits(&reg, rounds, |_| {
        black_box(reg.snapshot());
    });
    w.print("a snapshot of 100000 entries is taken", rounds);
    // Every expiry is logged, each line written as the binary's logger
    // writes to stderr (one write each), here to /dev/null.
    let mut expiry = Waits::default();
    let rounds = 3;
    for _ in 0..rounds {
        let clock = ManualClock::new();
        let reg = built(&clock);
        fill(&reg, Duration::from_secs(5));
        let logged = DevNullLogger::install();
        let w = heartbeat_waits(&reg, 1, |_| {
            clock.advance(Duration::from_secs(5));
            // The beating thread may meet the expiry first, and do it.
            reg.sweep();
            assert_eq!(reg.len(), 1, "every entry but the beating one expired");
        });
        log::set_max_level(log::LevelFilter::Off);
        assert!(
            logged.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the logger wrote"
        );
        expiry.add(w);
    }
    expiry.print("100000 entries expire at once (logged)", rounds);
    let clock = ManualClock::new();
    let reg = built(&clock);
    fill(&reg, hour);
    let w = heartbeat_waits(&reg, 1, |_| {
        let opts = PutOptions::new().ttl(hour - Duration::from_secs(1));
        for i in 0..n {
            reg.put_with("bench", &addr(i), &opts).expect("renew");
        }
    });
    w.print("100000 entries renew with a shorter TTL", 1);
    println!();
}

/// Heartbeat waits seen by a second thread, in powers of two of
/// nanoseconds (millions of beats in 64 counters), and the time `work`
/// took a round.
struct Waits {
    log2: [u64; 64],
    worst: Duration,
    work: Duration,
}

impl Default for Waits {
    fn default() -> Waits {
        Waits {
            log2: [0; 64],
            worst: Duration::ZERO,
            work: Duration::ZERO,
        }
    }
}

impl Waits {
    fn add(&mut self, other: Waits) {
        for (a, b) in self.log2.iter_mut().zip(other.log2) {
            *a += b;
        }
        self.worst = self.worst.max(other.worst);
        self.work += other.work;
    }

    fn print(&self, what: &str, rounds: u32) {
        let total: u64 = self.log2.iter().sum();
        let mut seen = 0;
        let p99 = self
            .log2
            .iter()
            .position(|&c| {
                seen += c;
                seen * 100 >= total * 99
            })
            .map_or(0, |b| 1u64 << b);
        let work = format!("{:.1?}", self.work / rounds);
        let worst = format!("{:.1?}", self.worst);
        println!("{what:<58} {total:>9} {p99:>9} ns {worst:>10} {work:>10}");
    }
}

/// Runs `work(round)` `rounds` times while a second thread renews one
/// entry of its own service in a loop and times each renewal. Each round
/// starts once that thread has beaten again, so a wait spans one round at
/// most.
fn heartbeat_waits(reg: &Registry, rounds: u32, mut work: impl FnMut(u32)) -> Waits {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let beat = PutOptions::new().ttl(Duration::from_secs(3600));
    reg.put_with("beat", "tcp@10.0.0.1:7001", &beat)
        .expect("register");
    std::thread::scope(|scope| {
        let beats = scope.spawn(|| {
            let mut w = Waits::default();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                black_box(
                    reg.put_with("beat", "tcp@10.0.0.1:7001", &beat)
                        .expect("renew"),
                );
                let wait = start.elapsed();
                w.worst = w.worst.max(wait);
                w.log2[64 - (wait.as_nanos() as u64).leading_zeros() as usize % 64] += 1;
                count.fetch_add(1, Ordering::Relaxed);
            }
            w
        });
        let mut work_time = Duration::ZERO;
        for k in 0..rounds {
            let seen = count.load(Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(10);
            while count.load(Ordering::Relaxed) < seen + 100 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            let start = Instant::now();
            work(k);
            work_time += start.elapsed();
        }
        stop.store(true, Ordering::Relaxed);
        let mut w = beats.join().expect("heartbeat thread");
        w.work = work_time;
        w
    })
}

/// Writes each log line to /dev/null with one `write`, as a logger to an
/// unbuffered stderr does; counts them.
struct DevNullLogger {
    file: std::fs::File,
    lines: std::sync::atomic::AtomicU64,
}

impl DevNullLogger {
    /// Installs it (once) at `info`; returns the count of lines written.
    fn install() -> &'static std::sync::atomic::AtomicU64 {
        static LOGGER: std::sync::OnceLock<DevNullLogger> = std::sync::OnceLock::new();
        let logger = LOGGER.get_or_init(|| DevNullLogger {
            file: std::fs::File::create("/dev/null").expect("open /dev/null"),
            lines: Default::default(),
        });
        let _ = log::set_logger(logger);
        log::set_max_level(log::LevelFilter::Info);
        &logger.lines
    }
}

impl log::Log for DevNullLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        use std::io::Write;
        let line = format!("{:<5} {}\n", r.level(), r.args());
        let _ = (&self.file).write_all(line.as_bytes());
        self.lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn flush(&self) {}
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
