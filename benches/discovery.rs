//! Discovery: how fast a change reaches a watching client, and how many
//! picks per second `get` makes in each selection mode.
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

/// `get` throughput per selection mode over 100 servers of mixed weights.
fn picks(budget: Duration) {
    let server = RegistryServer::start_local().expect("start");
    for i in 0..100u32 {
        let opts = PutOptions::new()
            .ttl(Duration::from_secs(60))
            .weight(1 + i % 5);
        server
            .registry()
            .put_with("p", &format!("tcp@p{i}:1"), &opts)
            .expect("put");
    }
    let d = Arc::new(
        RegistryDiscovery::builder(server.url())
            .service("p")
            .refresh_period(Duration::from_secs(3600))
            .build()
            .expect("discovery"),
    );
    d.get_all().expect("first fetch");
    println!("{:<22} {:>8} {:>14}", "mode", "threads", "picks/s");
    let modes = [
        ("Random", SelectMode::Random),
        ("RoundRobin", SelectMode::RoundRobin),
        ("WeightedRoundRobin", SelectMode::WeightedRoundRobin),
        (
            "ConsistentHash",
            SelectMode::ConsistentHash(hash_key("user-42")),
        ),
    ];
    for (name, mode) in modes {
        for threads in [1, 2] {
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
            let rate = counts.iter().sum::<u64>() as f64 / start.elapsed().as_secs_f64();
            println!("{name:<22} {threads:>8} {rate:>14.0}");
        }
    }
}
