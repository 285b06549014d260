//! HTTP throughput over loopback: regcenter against a bare tiny_http server
//! built the same way (same listener set-up, same thread count) that answers
//! every request with a fixed, prebuilt answer of the same size, and against
//! a registry that sorts and joins the list on every GET (the seed's design).
//!
//! `cargo bench --bench http` (under a minute: the best of two 0.25 s runs
//! per point); `REGCENTER_BENCH_LONG=1` takes the best of three 3 s runs. The load comes from `regcenter::loadgen`
//! (epoll clients, one kept-alive connection each) in this same process, so
//! server and clients share the machine's cores, as with wrk on one host.
//!
//! `cargo bench --bench http -- watch` runs only the delta watch scenario:
//! bytes and registry CPU per change with 200 watchers of 10 000 servers,
//! full listings against `delta=1` (about 15 s).
//!
//! `cargo bench --bench http -- scale` runs only the large deployment
//! (`regcenter::loadgen::ScaleOptions`: 10 000 servers in 100 services
//! renewing every 5 s with a 15 s TTL, 1 000 delta watchers, 10 changes a
//! second) against the release binary in a process of its own, so that
//! its CPU, memory, threads and descriptors are its own: once with UDP
//! renewals, once with HTTP ones, 60 s each (`REGCENTER_SCALE_SECS`
//! changes that). `-- scale-growth` runs it again growing one of servers,
//! watchers and changes at a time, 20 s a row (about 6 min). The registry
//! needs two descriptors per connection and the generator one: the bench
//! raises its soft descriptor limit to 16 384 (or the hard limit, if
//! lower; 1 000 watchers need about 2 100 in the registry, 3 000 about
//! 6 100), which the registry inherits.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regcenter::RegistryServer;
use regcenter::loadgen::{
    Beats, ListFormat, LoadOptions, LoadReport, Op, ScaleOptions, server_addr,
};

fn main() {
    // `cargo bench --bench http -- watch` runs only the delta watch
    // scenario.
    if std::env::args().any(|a| a == "watch") {
        delta_watch();
        return;
    }
    if std::env::args().any(|a| a == "scale") {
        scale();
        return;
    }
    if std::env::args().any(|a| a == "scale-growth") {
        scale_growth();
        return;
    }
    let long = std::env::var_os("REGCENTER_BENCH_LONG").is_some();
    let point = Duration::from_millis(if long { 3000 } else { 250 });
    let rounds = if long { 3 } else { 2 };
    let threads = thread::available_parallelism().map_or(2, |n| n.get());
    println!("threads per server: {threads}; best of {rounds} runs of {point:?} per point");
    println!(
        "{:<24} {:>7} {:>12} {:>12} {:>7} {:>9} {:>9}",
        "scenario", "clients", "regcenter/s", "reference/s", "ratio", "p50 us", "p99 us"
    );
    let scenarios = [
        ("POST renewal, 100", Op::Renew, ListFormat::Text, 100),
        ("GET seed header, 100", Op::Get, ListFormat::Seed, 100),
        ("GET text, 100", Op::Get, ListFormat::Text, 100),
        ("GET text, 10000", Op::Get, ListFormat::Text, 10_000),
    ];
    for (name, op, format, servers) in scenarios {
        for clients in [1, 8, 64] {
            // Alternate the two servers and keep each one's best run, so
            // that a passing disturbance of the machine hits both alike.
            let (mut ours, mut reference): (Option<LoadReport>, Option<LoadReport>) = (None, None);
            for _ in 0..rounds {
                let s = RegistryServer::builder()
                    .addr("127.0.0.1:0")
                    .threads(threads)
                    .max_connections(1000)
                    .start()
                    .expect("start regcenter");
                fill(&s, servers);
                ours = best(
                    ours,
                    run(s.url(), op, format, servers, clients, point, false),
                );
                drop(s);
                let r = Fixed::start(threads, op, format, servers);
                reference = best(
                    reference,
                    run(&r.url(), op, format, servers, clients, point, false),
                );
            }
            let (ours, reference) = (ours.expect("one round"), reference.expect("one round"));
            println!(
                "{name:<24} {clients:>7} {:>12.0} {:>12.0} {:>6.0}% {:>9} {:>9}",
                ours.rate(),
                reference.rate(),
                100.0 * ours.rate() / reference.rate(),
                ours.p50.as_micros(),
                ours.p99.as_micros()
            );
        }
    }
    for clients in [1, 8, 64] {
        let ours = {
            let s = RegistryServer::builder()
                .addr("127.0.0.1:0")
                .threads(threads)
                .start()
                .expect("start");
            fill(&s, 10_000);
            run(
                s.url(),
                Op::Get,
                ListFormat::Text,
                10_000,
                clients,
                point,
                false,
            )
        };
        let seed = {
            let b = SortEveryGet::start(threads);
            run(
                &b.url(),
                Op::Get,
                ListFormat::Text,
                10_000,
                clients,
                point,
                true,
            )
        };
        println!(
            "{:<24} {clients:>7} {:>12.0} {:>12.0} {:>6.1}x  (regcenter / sort-and-join on every GET)",
            "GET text 10000 vs seed",
            ours.rate(),
            seed.rate(),
            ours.rate() / seed.rate()
        );
    }
}

/// Watchers of one big service while it changes a few times a second:
/// bytes the registry sends per change and per watcher, and the CPU time
/// of its threads, with full JSON long-polls (as before delta watches) and
/// with `delta=1`. 127.0.0.1 only; about 15 s.
fn delta_watch() {
    const SERVERS: usize = 10_000;
    const WATCHERS: usize = 200;
    const PER_SECOND: u32 = 5;
    let window = Duration::from_secs(4);
    println!(
        "delta watch: {SERVERS} servers in one service, {WATCHERS} watchers, \
         {PER_SECOND} changes/s for {window:?}"
    );
    println!(
        "{:<8} {:>8} {:>10} {:>16} {:>16} {:>14}",
        "mode", "changes", "answers", "bytes/change/w", "registry CPU ms", "CPU ms/change"
    );
    for delta in [false, true] {
        let r = watch_run(SERVERS, WATCHERS, PER_SECOND, window, delta);
        println!(
            "{:<8} {:>8} {:>10} {:>16.0} {:>16} {:>14.1}",
            if delta { "delta" } else { "full" },
            r.changes,
            r.answers,
            r.bytes as f64 / (r.changes as f64 * WATCHERS as f64),
            r.cpu_ms,
            r.cpu_ms as f64 / r.changes as f64
        );
    }
}

/// The large deployment against the release binary, renewing by UDP and
/// then by HTTP.
fn scale() {
    let secs = std::env::var("REGCENTER_SCALE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    raise_descriptor_limit(16_384);
    for beats in [Beats::Udp, Beats::Http] {
        let reg = Child::serve();
        let report = ScaleOptions::new(&reg.url)
            .beats(beats)
            .duration(Duration::from_secs(secs))
            .registry_pid(Some(reg.pid()))
            .run()
            .expect("scale run");
        println!("{report}\n");
    }
}

/// How the large deployment's cost grows with servers, watchers and
/// changes, one at a time, 20 s a row.
fn scale_growth() {
    raise_descriptor_limit(16_384);
    println!(
        "{:<6} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}  errors",
        "beats",
        "servers",
        "watchers",
        "changes",
        "prop p50",
        "prop p99",
        "CPU",
        "RSS MB",
        "threads",
        "fds"
    );
    let rows: [(Beats, usize, usize, u32); 11] = [
        (Beats::Udp, 1_000, 1_000, 10),
        (Beats::Udp, 10_000, 1_000, 10),
        (Beats::Udp, 50_000, 1_000, 10),
        (Beats::Http, 1_000, 1_000, 10),
        (Beats::Http, 10_000, 1_000, 10),
        (Beats::Http, 50_000, 1_000, 10),
        (Beats::Udp, 10_000, 100, 10),
        (Beats::Udp, 10_000, 3_000, 10),
        (Beats::Udp, 10_000, 1_000, 1),
        (Beats::Udp, 10_000, 1_000, 50),
        (Beats::Udp, 10_000, 0, 10),
    ];
    for (beats, servers, watchers, changes) in rows {
        let reg = Child::serve();
        let r = ScaleOptions::new(&reg.url)
            .beats(beats)
            .servers(servers)
            .watchers(watchers)
            .changes_per_second(changes)
            .duration(Duration::from_secs(20))
            .registry_pid(Some(reg.pid()))
            .run()
            .expect("scale run");
        let p = r.registry.expect("the registry's process is measured");
        let errors: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "{:<6} {servers:>7} {watchers:>8} {changes:>8} {:>7.2}ms {:>7.2}ms {:>8.1}% {:>8.1} {:>8} {:>6}  {}",
            format!("{beats:?}").to_lowercase(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            p.cpu * 100.0,
            p.rss_bytes as f64 / 1e6,
            p.threads,
            p.fds,
            if errors.is_empty() {
                "none".into()
            } else {
                errors.join(", ")
            }
        );
    }
}

/// Raises this process's soft descriptor limit to `want` (or the hard
/// limit), for itself and the registry it starts.
fn raise_descriptor_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit; setrlimit reads it back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The release binary serving on a free loopback port (HTTP and UDP), in
/// a process of its own; killed and waited for on drop.
struct Child {
    process: std::process::Child,
    url: String,
}

impl Child {
    fn serve() -> Child {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_regcenter"))
            .args(["serve", "--addr", &addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the regcenter binary");
        let child = Child {
            process,
            url: format!("http://{addr}/myRPC/registry"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "regcenter serve never listened");
            thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

struct WatchReport {
    changes: u64,
    answers: u64,
    bytes: u64,
    cpu_ms: u64,
}

fn watch_run(
    servers: usize,
    watchers: usize,
    per_second: u32,
    window: Duration,
    delta: bool,
) -> WatchReport {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // Restored (from nothing), so it is not recovering: a registry that
    // started without its table answers in full until it has refilled.
    let reg = regcenter::Registry::builder()
        .max_entries(1_000_000)
        .build()
        .expect("valid settings");
    reg.restore(&regcenter::Registry::new().snapshot())
        .expect("an empty snapshot");
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .registry(reg)
        .max_connections(4 * watchers)
        .max_watchers(4 * watchers)
        .start()
        .expect("start regcenter");
    fill(&s, servers);
    let addr = s.local_addr();
    let bytes = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let handles: Vec<JoinHandle<()>> = (0..watchers)
        .map(|_| {
            let (bytes, answers, stop, ready) =
                (bytes.clone(), answers.clone(), stop.clone(), ready.clone());
            thread::Builder::new()
                .name("bench-watcher".into())
                .spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(60)))
                        .expect("timeout");
                    let (mut index, _) = http_get(&mut c, "/myRPC/registry/bench?format=json");
                    ready.fetch_add(1, Ordering::Relaxed);
                    let extra = if delta { "&delta=1" } else { "" };
                    while !stop.load(Ordering::Acquire) {
                        let path = format!(
                            "/myRPC/registry/bench?format=json&index={index}&wait=30s{extra}"
                        );
                        let (n, len) = http_get(&mut c, &path);
                        index = n;
                        bytes.fetch_add(len as u64, Ordering::Relaxed);
                        answers.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn a watcher")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < watchers as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    // Let every watcher park.
    thread::sleep(Duration::from_millis(500));
    let change = |k: usize| {
        let opts = regcenter::PutOptions::new().ttl(Duration::from_secs(3600));
        let a = server_addr(k / 3);
        match k % 3 {
            0 => {
                s.registry().remove("bench", &a).expect("remove");
            }
            1 => {
                s.registry().put_with("bench", &a, &opts).expect("put");
            }
            _ => {
                s.registry()
                    .put_with("bench", &a, &opts.weight(2))
                    .expect("put");
            }
        }
    };
    let (b0, a0, c0) = (
        bytes.load(Ordering::Relaxed),
        answers.load(Ordering::Relaxed),
        registry_cpu_ms(),
    );
    let start = Instant::now();
    let every = Duration::from_secs(1) / per_second;
    let mut k = 0;
    while start.elapsed() < window {
        change(k);
        k += 1;
        let next = start + every * k as u32;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // Answers still on their way count for the changes made.
    thread::sleep(Duration::from_millis(500));
    let report = WatchReport {
        changes: k as u64,
        answers: answers.load(Ordering::Relaxed) - a0,
        bytes: bytes.load(Ordering::Relaxed) - b0,
        cpu_ms: registry_cpu_ms() - c0,
    };
    stop.store(true, Ordering::Release);
    change(k); // wakes every watcher to see the stop
    for h in handles {
        h.join().expect("a watcher panicked");
    }
    drop(s);
    report
}

/// One keep-alive GET; returns the answer's `X-Myrpc-Index` and how many
/// bytes the answer took (head and body).
fn http_get(c: &mut std::net::TcpStream, path: &str) -> (u64, usize) {
    use std::io::{Read, Write};
    write!(c, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").expect("send");
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 64 << 10];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = c.read(&mut chunk).expect("read");
        assert!(n > 0, "the registry closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let field = |name: &str| -> u64 {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    let len = field("content-length:") as usize;
    let index = field("x-myrpc-index:");
    while buf.len() < head_end + len {
        let n = c.read(&mut chunk).expect("read");
        assert!(n > 0, "the registry closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    (index, head_end + len)
}

/// CPU time (user and system) of this process's threads but the bench's
/// own watchers: the registry's, in milliseconds (Linux; 0 elsewhere).
fn registry_cpu_ms() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut ticks = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "bench-watcher" {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // After the command in parentheses: state, then fields 4..; utime
        // and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        ticks += f.iter().sum::<u64>();
    }
    // USER_HZ is 100 on Linux.
    ticks * 10
}

/// Registers the load's servers in-process, as a run would over HTTP.
fn fill(s: &RegistryServer, servers: usize) {
    let opts = regcenter::PutOptions::new().ttl(Duration::from_secs(3600));
    for i in 0..servers {
        s.registry()
            .put_with("bench", &server_addr(i), &opts)
            .expect("put");
    }
}

fn best(a: Option<LoadReport>, b: LoadReport) -> Option<LoadReport> {
    Some(match a {
        Some(a) if a.rate() >= b.rate() => a,
        _ => b,
    })
}

/// One load run; `over_http`: register the servers over HTTP first
/// (regcenter is filled in-process instead, and the reference needs none).
fn run(
    url: &str,
    op: Op,
    format: ListFormat,
    servers: usize,
    clients: usize,
    d: Duration,
    over_http: bool,
) -> LoadReport {
    let r = LoadOptions::new(url)
        .op(op)
        .format(format)
        .servers(servers)
        .clients(clients)
        .preregister(over_http)
        .duration(d)
        .run()
        .expect("load run");
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    r
}

/// Same listener set-up as regcenter: TCP_NODELAY (copied to accepted
/// sockets), SO_REUSEADDR, backlog 1024.
fn listener() -> TcpListener {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuse");
    s.set_tcp_nodelay(true).expect("nodelay");
    s.bind(&addr.into()).expect("bind");
    s.listen(1024).expect("listen");
    s.into()
}

/// A tiny_http server with `threads` workers answering `answer(request)`.
struct Bare {
    http: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
}

impl Bare {
    fn start<F>(threads: usize, answer: F) -> Bare
    where
        F: Fn(&mut tiny_http::Request) -> tiny_http::Response<std::io::Cursor<Vec<u8>>>
            + Send
            + Sync
            + 'static,
    {
        let http = Arc::new(tiny_http::Server::from_listener(listener(), None).expect("server"));
        let answer = Arc::new(answer);
        let workers = (0..threads)
            .map(|_| {
                let (http, answer) = (http.clone(), answer.clone());
                thread::spawn(move || {
                    while let Ok(mut rq) = http.recv() {
                        let resp = answer(&mut rq);
                        let _ = rq.respond(resp);
                    }
                })
            })
            .collect();
        Bare { http, workers }
    }

    fn url(&self) -> String {
        format!("http://{}/myRPC/registry", self.http.server_addr())
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        for _ in 0..self.workers.len() {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn header(n: &str, v: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(n, v).expect("ASCII header")
}

/// The reference: every answer prebuilt, the same bytes regcenter sends.
struct Fixed(Bare);

impl Fixed {
    fn start(threads: usize, op: Op, format: ListFormat, servers: usize) -> Fixed {
        let addrs: Vec<String> = (0..servers).map(server_addr).collect();
        let mut sorted = addrs.clone();
        sorted.sort();
        let index = format!("{}", servers);
        let (headers, body): (Vec<tiny_http::Header>, Vec<u8>) = match (op, format) {
            (Op::Get, ListFormat::Seed) => (
                vec![
                    header("X-Myrpc-Servers", &sorted.join(",")),
                    header("X-Myrpc-Index", &index),
                ],
                Vec::new(),
            ),
            (Op::Get, _) => (
                vec![
                    header("Content-Type", "text/plain; charset=utf-8"),
                    header("X-Myrpc-Index", &index),
                ],
                sorted
                    .iter()
                    .flat_map(|a| format!("{a}\n").into_bytes())
                    .collect(),
            ),
            _ => (
                vec![
                    header("X-Myrpc-Ttl", "1h0m0s"),
                    header("X-Myrpc-Index", &index),
                ],
                Vec::new(),
            ),
        };
        Fixed(Bare::start(threads, move |_| {
            let mut r =
                tiny_http::Response::from_data(body.clone()).with_chunked_threshold(usize::MAX);
            for h in &headers {
                r.add_header(h.clone());
            }
            r
        }))
    }

    fn url(&self) -> String {
        self.0.url()
    }
}

/// The seed's design: one map under one lock; every GET filters, sorts and
/// joins the whole list.
struct SortEveryGet(Bare);

impl SortEveryGet {
    fn start(threads: usize) -> SortEveryGet {
        let table: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let ttl = Duration::from_secs(3600);
        SortEveryGet(Bare::start(threads, move |rq| {
            let addr = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("X-Myrpc-Server"))
                .map(|h| h.value.as_str().to_string());
            let mut sink = Vec::new();
            let _ = rq.as_reader().read_to_end(&mut sink);
            match (rq.method(), addr) {
                (tiny_http::Method::Post, Some(a)) => {
                    table.lock().insert(a, Instant::now());
                    tiny_http::Response::from_data(Vec::new())
                }
                (tiny_http::Method::Delete, Some(a)) => {
                    table.lock().remove(&a);
                    tiny_http::Response::from_data(Vec::new())
                }
                _ => {
                    let now = Instant::now();
                    let t = table.lock();
                    let mut alive: Vec<&String> = t
                        .iter()
                        .filter(|(_, at)| now.duration_since(**at) < ttl)
                        .map(|(a, _)| a)
                        .collect();
                    alive.sort();
                    let body: String = alive.iter().map(|a| format!("{a}\n")).collect();
                    drop(t);
                    tiny_http::Response::from_data(body.into_bytes())
                        .with_chunked_threshold(usize::MAX)
                        .with_header(header("X-Myrpc-Index", "1"))
                }
            }
        }))
    }

    fn url(&self) -> String {
        self.0.url()
    }
}
