//! A closed-loop HTTP load generator for registries: the engine of
//! `regcenter bench` and of the HTTP benchmarks. Built with the `cli`
//! feature (on by default), like the binary it serves.
//!
//! Each client is one kept-alive connection that sends a request, reads the
//! whole answer, and sends the next; a few threads named `loadgen-N` drive
//! them (with epoll on Linux, like wrk). Requests are written by hand and
//! answers parsed minimally, so the generator costs little next to the
//! server it measures. It prints nothing: progress goes to the callback of
//! [`LoadOptions::run_with_progress`], the outcome into a [`LoadReport`].
//!
//! [`ScaleOptions`] runs a whole deployment instead (`regcenter bench --op
//! scale`): servers renewing on a period, watchers, membership changes;
//! its [`ScaleReport`] says how fast changes reach the watchers and what
//! the registry's process spent.
//!
//! ```
//! use regcenter::loadgen::{LoadOptions, Op};
//! use regcenter::RegistryServer;
//! use std::time::Duration;
//!
//! let server = RegistryServer::start_local()?;
//! let report = LoadOptions::new(server.url())
//!     .op(Op::Get)
//!     .clients(2)
//!     .servers(10)
//!     .duration(Duration::from_millis(200))
//!     .run()?;
//! assert!(report.requests > 0);
//! assert_eq!(report.errors.values().sum::<u64>(), 0);
//! # Ok::<(), regcenter::Error>(())
//! ```

mod conn;
mod event_loop;
mod scale;
mod udp;

pub use scale::{Beats, ProcessFigures, ScaleOptions, ScaleReport, listening_pid};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use crate::error::{Error, Result};
use crate::protocol::{HEADER_SERVER, HEADER_TTL, HEADER_UDP, validate_service};

use conn::{Conn, Requests, Target};
use event_loop::event_loop;

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET the service's listing.
    Get,
    /// POST a renewal of one of the registered servers.
    Renew,
    /// POST a new address each time (with the smallest TTL, so they expire).
    Register,
    /// Nine GETs for each renewal.
    Mixed,
    /// A renewal of one of the registered servers by datagram, to the UDP
    /// port the registry's POST answer advertises; the clients are the
    /// datagrams kept in flight.
    RenewUdp,
}

impl std::str::FromStr for Op {
    type Err = Error;

    fn from_str(s: &str) -> Result<Op> {
        match s {
            "get" => Ok(Op::Get),
            "renew" => Ok(Op::Renew),
            "register" => Ok(Op::Register),
            "mixed" => Ok(Op::Mixed),
            "renew-udp" => Ok(Op::RenewUdp),
            _ => Err(Error::config(
                "op",
                format!("{s:?}: use get, renew, register, mixed or renew-udp"),
            )),
        }
    }
}

/// How a GET asks for the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// The seed's answer: the list in `X-Myrpc-Servers`, no body.
    Seed,
    /// `?format=text`: one address per line in the body.
    Text,
}

/// Settings of one load run.
#[derive(Debug, Clone)]
#[must_use]
pub struct LoadOptions {
    registry: String,
    service: String,
    op: Op,
    format: ListFormat,
    clients: usize,
    servers: usize,
    duration: Duration,
    max_requests: u64,
    timeout: Duration,
    preregister: bool,
    token: Option<String>,
}

impl LoadOptions {
    /// Load against the registry URL (e.g. `http://127.0.0.1:9999/myRPC/registry`).
    pub fn new(registry: &str) -> LoadOptions {
        LoadOptions {
            registry: registry.trim_end_matches('/').to_string(),
            service: "bench".into(),
            op: Op::Get,
            format: ListFormat::Text,
            clients: 8,
            servers: 100,
            duration: Duration::from_secs(10),
            max_requests: u64::MAX,
            timeout: Duration::from_secs(5),
            preregister: true,
            token: None,
        }
    }

    /// The service to load. Defaults to `bench`.
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_string();
        self
    }

    /// What each request does. Defaults to [`Op::Get`].
    pub fn op(mut self, op: Op) -> Self {
        self.op = op;
        self
    }

    /// How GETs ask for the list. Defaults to [`ListFormat::Text`].
    pub fn format(mut self, format: ListFormat) -> Self {
        self.format = format;
        self
    }

    /// Concurrent clients, one connection each. Defaults to 8.
    pub fn clients(mut self, clients: usize) -> Self {
        self.clients = clients;
        self
    }

    /// Servers registered before the run and removed after it. Defaults to 100.
    pub fn servers(mut self, servers: usize) -> Self {
        self.servers = servers;
        self
    }

    /// How long to load. Defaults to 10 s.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Stop after this many requests in all, even before the duration.
    /// Defaults to no limit.
    pub fn max_requests(mut self, max: u64) -> Self {
        self.max_requests = max;
        self
    }

    /// Bound of each connect, read and write. Defaults to 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Register the servers (over HTTP, TTL 1 h) before the run and remove
    /// them after it; turn off when the registry holds them already (see
    /// [`server_addr`]). Defaults to on.
    pub fn preregister(mut self, on: bool) -> Self {
        self.preregister = on;
        self
    }

    /// The registry's bearer token, sent with every request. Defaults to
    /// none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Registers the servers, runs the load, removes the servers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that is not `http://host:port/path`
    /// or zero clients; [`Error::Unreachable`] or [`Error::Status`] when
    /// registering the servers fails; [`Error::Io`] when a load thread
    /// cannot be spawned (the threads already started stop after their
    /// current request and are joined first).
    pub fn run(&self) -> Result<LoadReport> {
        self.run_inner(None)
    }

    /// [`run`](Self::run), calling `on_tick` on the calling thread once a
    /// second while the load runs, with the requests sent so far.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_with_progress(&self, mut on_tick: impl FnMut(Progress)) -> Result<LoadReport> {
        self.run_inner(Some(&mut on_tick))
    }

    fn run_inner(&self, on_tick: Option<&mut dyn FnMut(Progress)>) -> Result<LoadReport> {
        validate_service(&self.service)?;
        if self.clients == 0 {
            return Err(Error::config("clients", "must be at least 1"));
        }
        let mut target = Target::parse(&self.registry, &self.service)?;
        if let Some(t) = &self.token {
            crate::client::validate_token(t)?;
            target.head = format!("{}\r\nAuthorization: Bearer {t}", target.host);
        }
        let addrs: Vec<String> = (0..self.servers).map(server_addr).collect();
        if !self.preregister {
            if self.op == Op::RenewUdp {
                // Without a POST to read it from: the number of HTTP's.
                return self.load_udp(&target, target.port(), &addrs, on_tick);
            }
            return self.load(&target, &addrs, on_tick);
        }
        let mut setup = Conn::open(&target, self.timeout)?;
        for a in &addrs {
            setup.register(&target, a)?;
        }
        if self.op == Op::RenewUdp {
            let report = self
                .udp_port(&target)
                .and_then(|port| self.load_udp(&target, port, &addrs, on_tick));
            for a in &addrs {
                let _ = setup.delete(&target, a);
            }
            return report;
        }
        // The servers go again whether or not the load ran.
        let report = self.load(&target, &addrs, on_tick);
        for a in &addrs {
            let _ = setup.delete(&target, a);
        }
        report
    }

    /// The UDP port the registry advertises (see [`advertised_udp_port`]);
    /// without servers, the HTTP port.
    fn udp_port(&self, target: &Target) -> Result<u16> {
        if self.servers == 0 {
            return Ok(target.port());
        }
        advertised_udp_port(
            target,
            &server_addr(0),
            "1h",
            self.token.as_deref(),
            self.timeout,
        )
    }

    /// Renewals by datagram from a thread a core, each with its share of
    /// the servers and of the clients (the datagrams it keeps in flight).
    fn load_udp(
        &self,
        target: &Target,
        port: u16,
        addrs: &[String],
        mut on_tick: Option<&mut dyn FnMut(Progress)>,
    ) -> Result<LoadReport> {
        let started = Instant::now();
        let budget = Arc::new(Budget::new(started + self.duration, self.max_requests));
        let threads = thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(self.clients);
        let window = self.clients.div_ceil(threads);
        let to = SocketAddr::new(target.ip(), port);
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let mine: Vec<String> = addrs.iter().skip(t).step_by(threads).cloned().collect();
            // Fewer servers than threads: threads share them.
            let mine = if mine.is_empty() && !addrs.is_empty() {
                vec![addrs[t % addrs.len()].clone()]
            } else {
                mine
            };
            let load = udp::UdpLoad {
                to,
                service: self.service.clone(),
                addrs: mine,
                window,
                token: self.token.as_ref().map(|t| t.as_bytes().to_vec()),
                timeout: self.timeout,
            };
            let shared = budget.clone();
            spawn_worker(
                &mut workers,
                &budget,
                format!("loadgen-udp-{t}"),
                move || udp::udp_loop(&load, &shared),
            )?;
        }
        self.finish(workers, &budget, started, on_tick.take())
    }

    /// Reports progress until the `workers` end, then their tallies.
    fn finish(
        &self,
        workers: Vec<thread::JoinHandle<event_loop::Tally>>,
        budget: &Budget,
        started: Instant,
        mut on_tick: Option<&mut dyn FnMut(Progress)>,
    ) -> Result<LoadReport> {
        if let Some(on_tick) = on_tick.as_mut() {
            // Bounded: every worker ends within the duration plus one
            // timeout.
            let mut last = 0;
            while !workers.iter().all(|w| w.is_finished()) {
                thread::sleep(Duration::from_millis(50));
                let elapsed = started.elapsed();
                if elapsed.as_secs() > last {
                    last = elapsed.as_secs();
                    on_tick(Progress {
                        elapsed,
                        requests: budget.sent(),
                    });
                }
            }
        }
        let mut latencies = Vec::new();
        let mut errors = BTreeMap::new();
        for w in workers {
            let tally = w.join().unwrap_or_default();
            latencies.extend(tally.latencies);
            for (k, v) in tally.errors {
                *errors.entry(k).or_insert(0) += v;
            }
        }
        let elapsed = started.elapsed();
        latencies.sort_unstable();
        Ok(LoadReport::new(latencies, errors, elapsed))
    }

    fn load(
        &self,
        target: &Target,
        addrs: &[String],
        mut on_tick: Option<&mut dyn FnMut(Progress)>,
    ) -> Result<LoadReport> {
        let reqs = Arc::new(Requests::new(target, addrs, self.op, self.format));
        let started = Instant::now();
        let budget = Arc::new(Budget::new(started + self.duration, self.max_requests));
        let threads = thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(self.clients);
        let per = self.clients.div_ceil(threads);
        let mut workers = Vec::with_capacity(threads);
        for t in 0..threads {
            let ids: Vec<usize> = (t * per..((t + 1) * per).min(self.clients)).collect();
            let (target, reqs, shared) = (target.clone(), reqs.clone(), budget.clone());
            let timeout = self.timeout;
            spawn_worker(&mut workers, &budget, format!("loadgen-{t}"), move || {
                event_loop(ids, &target, &reqs, timeout, &shared)
            })?;
        }
        self.finish(workers, &budget, started, on_tick.take())
    }
}

/// The UDP port the registry advertises, read from the answer to a
/// registration of `addr` (made already, so this renews it with the same
/// `ttl`).
fn advertised_udp_port(
    target: &Target,
    addr: &str,
    ttl: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<u16> {
    let url = format!("http://{}{}", target.host, target.path);
    let agent = crate::client::agent_trusting(timeout, &crate::client::Trust::default());
    let auth = crate::client::bearer(token);
    let headers: Vec<(&str, &str)> = [(HEADER_SERVER, addr), (HEADER_TTL, ttl)]
        .into_iter()
        .chain(auth.iter().map(|(n, v)| (*n, v.as_str())))
        .collect();
    let reply = crate::client::call(&agent, crate::client::Verb::Post, &url, &headers)?.ok(&url)?;
    reply
        .header(HEADER_UDP)
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            Error::config(
                "op",
                format!("{url} advertises no UDP renewals (no {HEADER_UDP} in its POST answer)"),
            )
        })
}

/// How far a run has come: what [`LoadOptions::run_with_progress`] hands
/// its callback once a second.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Time since the load started.
    pub elapsed: Duration,
    /// Requests sent so far, failed ones included.
    pub requests: u64,
}

impl Progress {
    /// Requests sent per second so far.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the threads of a run draw on: its end, and its requests.
struct Budget {
    deadline: Instant,
    max: u64,
    sent: AtomicU64,
    /// Set when the run is abandoned (a load thread could not be spawned).
    stop: AtomicBool,
}

impl Budget {
    fn new(deadline: Instant, max: u64) -> Budget {
        Budget {
            deadline,
            max,
            sent: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Whether one more request may be sent, counting it if so.
    fn take(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.sent.fetch_add(1, Ordering::Relaxed) < self.max
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The address of the `i`-th server a run registers: `tcp@10.a.b.c:7001`.
pub fn server_addr(i: usize) -> String {
    format!(
        "tcp@10.{}.{}.{}:7001",
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255
    )
}

/// The outcome of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests by kind (`connect`, `timeout`, `read`, `closed`,
    /// `bad answer`, `status 503`, …).
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency percentiles of successful requests: p50, p90, p99, max.
    pub p50: Duration,
    /// 90th percentile latency.
    pub p90: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Largest latency.
    pub max: Duration,
}

impl LoadReport {
    fn new(sorted_us: Vec<u32>, errors: BTreeMap<String, u64>, elapsed: Duration) -> LoadReport {
        let pct = |p: f64| {
            if sorted_us.is_empty() {
                return Duration::ZERO;
            }
            let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
            Duration::from_micros(sorted_us[i].into())
        };
        LoadReport {
            requests: sorted_us.len() as u64,
            p50: pct(0.50),
            p90: pct(0.90),
            p99: pct(0.99),
            max: pct(1.0),
            errors,
            elapsed,
        }
    }

    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        writeln!(
            f,
            "requests     {} in {:.2}s",
            self.requests,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "rate         {:.0} req/s", self.rate())?;
        writeln!(
            f,
            "latency      p50 {:.0}us  p90 {:.0}us  p99 {:.0}us  max {:.0}us",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.max)
        )?;
        if self.errors.is_empty() {
            write!(f, "errors       none")
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            write!(f, "errors       {}", list.join(", "))
        }
    }
}

/// Starts one load thread; when it cannot be spawned, stops the threads
/// already running (they end after their current request) and joins them
/// before reporting.
fn spawn_worker(
    workers: &mut Vec<thread::JoinHandle<event_loop::Tally>>,
    budget: &Budget,
    name: String,
    work: impl FnOnce() -> event_loop::Tally + Send + 'static,
) -> Result<()> {
    match thread::Builder::new().name(name).spawn(work) {
        Ok(w) => {
            workers.push(w);
            Ok(())
        }
        Err(e) => {
            budget.stop();
            for w in workers.drain(..) {
                let _ = w.join();
            }
            Err(Error::io("spawn a load thread", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A registry stand-in on 127.0.0.1 that answers the first request of
    /// each connection (the generator's warm-up GET) with a valid 200 and
    /// every later one with `bad`, keeping the connection open. Serves one
    /// connection at a time until dropped.
    struct Answering {
        url: String,
        stop: Arc<AtomicBool>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Answering {
        fn start(bad: &'static [u8]) -> Answering {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = thread::Builder::new()
                .name("loadgen-test-server".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if flag.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(mut conn) = conn else { continue };
                        // Bounds the wait for a client that neither sends
                        // nor closes.
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                        let (mut buf, mut chunk, mut answered) = (Vec::new(), [0u8; 4096], 0);
                        while let Ok(n @ 1..) = conn.read(&mut chunk) {
                            buf.extend_from_slice(&chunk[..n]);
                            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                buf.drain(..end + 4);
                                let answer: &[u8] = if answered == 0 {
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                                } else {
                                    bad
                                };
                                answered += 1;
                                if conn.write_all(answer).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                })
                .unwrap();
            Answering {
                url: format!("http://{addr}/myRPC/registry"),
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Answering {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wakes the accept so that the thread sees the flag.
            let addr = self.url["http://".len()..].split('/').next().unwrap();
            let _ = TcpStream::connect(addr);
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    #[test]
    fn progress_reaches_the_caller_while_named_threads_load() {
        let server = crate::RegistryServer::start_local().unwrap();
        let mut ticks = Vec::new();
        let mut names = Vec::new();
        // Long enough that the first tick, at 1 s, comes while the load
        // threads still run even on a busy machine.
        let report = LoadOptions::new(server.url())
            .clients(2)
            .servers(1)
            .duration(Duration::from_secs(4))
            .run_with_progress(|p| {
                if ticks.is_empty() {
                    names = thread_names();
                }
                ticks.push(p);
            })
            .unwrap();
        assert!(report.requests > 0, "{report}");
        assert!(!ticks.is_empty(), "no progress in {:?}", report.elapsed);
        for w in ticks.windows(2) {
            assert!(w[0].elapsed < w[1].elapsed, "{ticks:?}");
            assert!(w[0].requests <= w[1].requests, "{ticks:?}");
        }
        assert!(ticks[0].elapsed >= Duration::from_secs(1), "{ticks:?}");
        assert!(ticks[0].requests > 0, "{ticks:?}");
        if cfg!(target_os = "linux") {
            assert!(names.iter().any(|n| n == "loadgen-0"), "{names:?}");
        }
    }

    /// The names of this process's threads (Linux; empty elsewhere).
    fn thread_names() -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim_end().to_string())
            .collect()
    }

    #[test]
    fn a_malformed_answer_counts_as_a_bad_answer_at_once_not_as_a_timeout() {
        for bad in [
            &b"HTTP/1.1 2xx OK\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 \xff\xfe\r\nContent-Length: 0\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            let server = Answering::start(bad);
            let report = LoadOptions::new(&server.url)
                .clients(1)
                .servers(0)
                .preregister(false)
                .max_requests(2)
                // Far beyond the run, so that a run that waits for the
                // timeout (the bug) shows, and a loaded machine cannot
                // make a prompt answer late.
                .duration(Duration::from_secs(60))
                .timeout(Duration::from_secs(10))
                .run()
                .unwrap();
            assert_eq!(report.requests, 0, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(
                report.errors,
                BTreeMap::from([("bad answer".to_string(), 2)]),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
