//! Discovery: how fast a change reaches a watching client, and how many
//! picks per second `get` makes in each selection mode, plain and with a
//! filter, a zone preference or ejected instances.
//!
//! `cargo bench --bench discovery` (a few seconds); `REGCENTER_BENCH_LONG=1`
//! runs more registrations and longer pick loops.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use regcenter::{Discovery, PutOptions, RegistryDiscovery, RegistryServer, SelectMode, hash_key};

fn main() {
    let long = std::env::var_os("REGCENTER_BENCH_LONG").is_some();
    watch_latency(if long { 2000 } else { 300 });
    picks(Duration::from_millis(if long { 2000 } else { 300 }));
}

/// POST a new address over HTTP, then wait until a watching discovery lists
/// it; report the median and p99 of that delay.
fn watch_latency(rounds: usize) {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_secs(60))
        .start()
        .expect("start");
    let d = RegistryDiscovery::builder(server.url())
        .service("w")
        .refresh_period(Duration::from_secs(3600))
        .watch(true)
        .build()
        .expect("discovery");
    d.get_all().expect("first fetch");
    let mut conn = TcpStream::connect(server.local_addr()).expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1024];
    let mut delays = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Wait until the watch is parked again, so every round measures a
        // wake-up rather than a fetch already in flight.
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.parked() == 0 && Instant::now() < deadline {
            thread::yield_now();
        }
        let addr = format!("tcp@w{i}:1");
        let req = format!(
            "POST /myRPC/registry/w HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: {addr}\r\nContent-Length: 0\r\n\r\n"
        );
        let seen = d.index();
        let t = Instant::now();
        conn.write_all(req.as_bytes()).expect("post");
        let n = conn.read(&mut buf).expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let mut index = seen;
        while d.get_all().expect("list").len() <= i {
            index = d.wait_for_change(index, Duration::from_secs(5));
        }
        delays.push(t.elapsed());
    }
    delays.sort();
    let pct =
        |p: f64| delays[((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "POST -> watching discovery sees it: {rounds} registrations, median {:?}, p99 {:?}, max {:?}\n",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    d.stop().expect("stop");
    server.shutdown().expect("shutdown");
}

/// `get` throughput per selection mode over 100 servers of mixed weights:
/// plain; with a filter (100 of the 200 registered match); with a zone
/// preference (50 of the 100 preferred); and with 10 of the 100 ejected.
/// Each figure is the median of five rounds.
fn picks(budget: Duration) {
    let server = RegistryServer::start_local().expect("start");
    for i in 0..200u32 {
        let opts = PutOptions::new()
            .ttl(Duration::from_secs(60))
            .weight(1 + i % 5)
            .meta("zone", if i % 4 < 2 { "eu" } else { "us" })
            .meta("tier", if i < 100 { "main" } else { "spare" });
        let service = if i < 100 { "p" } else { "f" };
        server
            .registry()
            .put_with(service, &format!("tcp@p{i}:1"), &opts)
            .expect("put");
    }
    // The filtered service holds the plain one's 100 and 100 that do not match.
    for i in 0..100u32 {
        let opts = PutOptions::new()
            .ttl(Duration::from_secs(60))
            .weight(1 + i % 5)
            .meta("tier", "main");
        server
            .registry()
            .put_with("f", &format!("tcp@p{i}:1"), &opts)
            .expect("put");
    }
    let builder =
        || RegistryDiscovery::builder(server.url()).refresh_period(Duration::from_secs(3600));
    let plain = Arc::new(builder().service("p").build().expect("discovery"));
    let filtered = Arc::new(
        builder()
            .service("f")
            .filter("tier", "main")
            .build()
            .expect("discovery"),
    );
    let preferring = Arc::new(
        builder()
            .service("p")
            .prefer("zone", "eu")
            .build()
            .expect("discovery"),
    );
    let ejecting = Arc::new(builder().service("p").build().expect("discovery"));
    for d in [&plain, &filtered, &preferring, &ejecting] {
        assert_eq!(d.get_all().expect("first fetch").len(), 100);
    }
    // Ejections last 1 s at first: renewed before each run, they hold
    // through it (failures while out are not counted).
    let eject = |d: &RegistryDiscovery| {
        for i in 0..10 {
            for _ in 0..3 {
                d.report_failure(&format!("tcp@p{}:1", i * 10));
            }
        }
    };
    eject(&ejecting);
    assert_eq!(ejecting.get_all().expect("list").len(), 90);
    println!(
        "{:<22} {:>8} {:>14} {:>14} {:>14} {:>14}",
        "mode", "threads", "plain/s", "filter/s", "prefer/s", "10 ejected/s"
    );
    let modes = [
        ("Random", SelectMode::Random),
        ("RoundRobin", SelectMode::RoundRobin),
        ("WeightedRoundRobin", SelectMode::WeightedRoundRobin),
        (
            "ConsistentHash",
            SelectMode::ConsistentHash(hash_key("user-42")),
        ),
    ];
    // A discarded warm-up: without it the first row reads low.
    rate(&plain, SelectMode::Random, 1, budget / 5);
    // The four take turns in short rounds and each reports its median, so
    // that a machine busy with other work slows them alike.
    const ROUNDS: usize = 5;
    for (name, mode) in modes {
        for threads in [1, 2] {
            let slice = budget / ROUNDS as u32;
            let rounds: Vec<[f64; 4]> = (0..ROUNDS)
                .map(|_| {
                    let a = rate(&plain, mode, threads, slice);
                    let b = rate(&filtered, mode, threads, slice);
                    let c = rate(&preferring, mode, threads, slice);
                    eject(&ejecting);
                    [a, b, c, rate(&ejecting, mode, threads, slice)]
                })
                .collect();
            let median = |k: usize| {
                let mut r: Vec<f64> = rounds.iter().map(|round| round[k]).collect();
                r.sort_by(f64::total_cmp);
                r[ROUNDS / 2]
            };
            let (a, b, c, e) = (median(0), median(1), median(2), median(3));
            println!("{name:<22} {threads:>8} {a:>14.0} {b:>14.0} {c:>14.0} {e:>14.0}");
        }
    }
}

/// Picks per second of `mode` from `threads` threads for `budget`.
fn rate(d: &Arc<RegistryDiscovery>, mode: SelectMode, threads: usize, budget: Duration) -> f64 {
    let start = Instant::now();
    let counts: Vec<u64> = (0..threads)
        .map(|_| {
            let d = d.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while start.elapsed() < budget {
                    for _ in 0..1000 {
                        black_box(d.get(mode).expect("pick"));
                    }
                    n += 1000;
                }
                n
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64()
}
