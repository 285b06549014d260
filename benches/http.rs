//! HTTP throughput over loopback: regcenter against a bare tiny_http server
//! built the same way (same listener set-up, same thread count) that answers
//! every request with a fixed, prebuilt answer of the same size, and against
//! a registry that sorts and joins the list on every GET (the seed's design).
//!
//! `cargo bench --bench http` (under a minute: the best of two 0.25 s runs
//! per point); `REGCENTER_BENCH_LONG=1` takes the best of three 3 s runs. The load comes from `regcenter::loadgen`
//! (epoll clients, one kept-alive connection each) in this same process, so
//! server and clients share the machine's cores, as with wrk on one host.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regcenter::RegistryServer;
use regcenter::loadgen::{ListFormat, LoadOptions, LoadReport, Op, server_addr};

fn main() {
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
