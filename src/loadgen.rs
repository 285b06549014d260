//! A closed-loop HTTP load generator for registries: the engine of
//! `regcenter bench` and of the HTTP benchmarks.
//!
//! Each client is a thread with one kept-alive connection that sends a
//! request, reads the whole answer, and sends the next. Requests are written
//! by hand and answers parsed minimally, so the generator costs little next
//! to the server it measures.
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

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::protocol::{HEADER_SERVER, HEADER_TTL, validate_service};

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
}

impl std::str::FromStr for Op {
    type Err = Error;

    fn from_str(s: &str) -> Result<Op> {
        match s {
            "get" => Ok(Op::Get),
            "renew" => Ok(Op::Renew),
            "register" => Ok(Op::Register),
            "mixed" => Ok(Op::Mixed),
            _ => Err(Error::config(
                "op",
                format!("{s:?}: use get, renew, register or mixed"),
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
    progress: bool,
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
            progress: false,
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

    /// Print requests per second to stderr once a second. Defaults to off.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Registers the servers, runs the load, removes the servers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that is not `http://host:port/path`
    /// or zero clients; [`Error::Unreachable`] or [`Error::Status`] when
    /// registering the servers fails.
    pub fn run(&self) -> Result<LoadReport> {
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
            return Ok(self.load(&target, &addrs));
        }
        let mut setup = Conn::open(&target, self.timeout)?;
        for a in &addrs {
            setup.register(&target, a)?;
        }
        let report = self.load(&target, &addrs);
        for a in &addrs {
            let _ = setup.delete(&target, a);
        }
        Ok(report)
    }

    fn load(&self, target: &Target, addrs: &[String]) -> LoadReport {
        let done = Arc::new(AtomicU64::new(0));
        let reqs = Arc::new(Requests::new(target, addrs, self.op, self.format));
        let started = Instant::now();
        let deadline = started + self.duration;
        let threads = thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(self.clients);
        let per = self.clients.div_ceil(threads);
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let ids: Vec<usize> = (t * per..((t + 1) * per).min(self.clients)).collect();
                let (target, reqs, done) = (target.clone(), reqs.clone(), done.clone());
                let (timeout, max) = (self.timeout, self.max_requests);
                thread::spawn(move || {
                    event_loop(ids, &target, &reqs, timeout, deadline, max, &done)
                })
            })
            .collect();
        if self.progress {
            let mut last = 0;
            while !workers.iter().all(|w| w.is_finished()) {
                thread::sleep(Duration::from_millis(50));
                let secs = started.elapsed().as_secs();
                if secs > last {
                    last = secs;
                    let n = done.load(Ordering::Relaxed);
                    eprintln!(
                        "{secs:>4}s {n:>11} requests {:>10.0} req/s",
                        n as f64 / started.elapsed().as_secs_f64()
                    );
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
        LoadReport::new(latencies, errors, elapsed)
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

/// Where the requests go, with the request texts prepared once.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
    /// The Host header's value, followed by the Authorization header when
    /// a token is set: what every request template puts after `Host: `.
    head: String,
    path: String,
}

impl Target {
    fn parse(registry: &str, service: &str) -> Result<Target> {
        let bad = || {
            Error::config(
                "registry",
                format!("{registry:?}: use http://host:port/path"),
            )
        };
        let rest = registry.strip_prefix("http://").ok_or_else(bad)?;
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let addr = host
            .to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .ok_or_else(bad)?;
        let mut path = format!("/{path}");
        if !service.is_empty() {
            path = format!("{}/{service}", path.trim_end_matches('/'));
        }
        Ok(Target {
            addr,
            host: host.to_string(),
            head: host.to_string(),
            path,
        })
    }
}

/// One kept-alive connection with a reusable read buffer.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

/// An answer's status, or what went wrong.
enum Outcome {
    Status(u16),
    Failed(&'static str),
}

impl Conn {
    fn open(target: &Target, timeout: Duration) -> Result<Conn> {
        let url = format!("http://{}{}", target.host, target.path);
        let s =
            TcpStream::connect_timeout(&target.addr, timeout).map_err(|e| Error::Unreachable {
                url: url.clone(),
                source: Box::new(e),
            })?;
        let setup = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))
        };
        setup(&s).map_err(|e| Error::io("set up a load connection", e))?;
        let writer = s
            .try_clone()
            .map_err(|e| Error::io("set up a load connection", e))?;
        Ok(Conn {
            reader: BufReader::with_capacity(256 * 1024, s),
            writer,
            line: String::new(),
        })
    }

    /// Registers `addr` for an hour: the same request the renewals send.
    fn register(&mut self, target: &Target, addr: &str) -> Result<()> {
        self.expect_ok(target, &Requests::post(target, addr, "1h"))
    }

    fn delete(&mut self, target: &Target, addr: &str) -> Result<()> {
        let req = format!(
            "DELETE {} HTTP/1.1\r\nHost: {}\r\n{HEADER_SERVER}: {addr}\r\n\r\n",
            target.path, target.head
        );
        self.expect_ok(target, req.as_bytes())
    }

    fn expect_ok(&mut self, target: &Target, req: &[u8]) -> Result<()> {
        let url = format!("http://{}{}", target.host, target.path);
        match self.exchange(req) {
            Outcome::Status(s) if (200..300).contains(&s) => Ok(()),
            Outcome::Status(status) => Err(Error::Status {
                url,
                status,
                reason: String::new(),
            }),
            Outcome::Failed(what) => Err(Error::Unreachable {
                url,
                source: what.into(),
            }),
        }
    }

    /// Sends one request and reads its whole answer.
    fn exchange(&mut self, req: &[u8]) -> Outcome {
        if self.writer.write_all(req).is_err() {
            return Outcome::Failed("write");
        }
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => return Outcome::Failed("closed"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Failed("timeout");
            }
            Err(_) => return Outcome::Failed("read"),
        }
        let Some(status) = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
        else {
            return Outcome::Failed("bad answer");
        };
        let mut length = 0usize;
        loop {
            self.line.clear();
            match self.reader.read_line(&mut self.line) {
                Ok(0) | Err(_) => return Outcome::Failed("read"),
                Ok(_) => {}
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':')
                && n.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut rest = length;
        while rest > 0 {
            let buf = match self.reader.fill_buf() {
                Ok([]) | Err(_) => return Outcome::Failed("read"),
                Ok(b) => b.len().min(rest),
            };
            self.reader.consume(buf);
            rest -= buf;
        }
        Outcome::Status(status)
    }
}

/// The requests a run sends, prepared once and shared by the threads.
struct Requests {
    get: Vec<u8>,
    renewals: Vec<Vec<u8>>,
    path: String,
    host: String,
    op: Op,
}

impl Requests {
    fn new(target: &Target, addrs: &[String], op: Op, format: ListFormat) -> Requests {
        let query = match format {
            ListFormat::Seed => "",
            ListFormat::Text => "?format=text",
        };
        Requests {
            get: format!(
                "GET {}{query} HTTP/1.1\r\nHost: {}\r\n\r\n",
                target.path, target.head
            )
            .into_bytes(),
            renewals: addrs.iter().map(|a| Self::post(target, a, "1h")).collect(),
            path: target.path.clone(),
            host: target.head.clone(),
            op,
        }
    }

    fn post(target: &Target, addr: &str, ttl: &str) -> Vec<u8> {
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{HEADER_SERVER}: {addr}\r\n{HEADER_TTL}: {ttl}\r\nContent-Length: 0\r\n\r\n",
            target.path, target.head
        )
        .into_bytes()
    }

    /// The `i`-th request of client `id`.
    fn nth<'a>(&'a self, id: usize, i: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        let renewal = |i: usize| self.renewals.get(i % self.renewals.len().max(1));
        match self.op {
            Op::Get => &self.get,
            Op::Renew => renewal(i).map_or(&self.get, |r| r),
            Op::Mixed if i.is_multiple_of(10) => renewal(i / 10).map_or(&self.get, |r| r),
            Op::Mixed => &self.get,
            Op::Register => {
                scratch.clear();
                let _ = write!(
                    scratch,
                    "POST {} HTTP/1.1\r\nHost: {}\r\n{HEADER_SERVER}: tcp@load-{id}-{i}:1\r\n{HEADER_TTL}: 1s\r\nContent-Length: 0\r\n\r\n",
                    self.path, self.host
                );
                scratch
            }
        }
    }
}

/// One client of an event-loop thread: a non-blocking connection with the
/// answer read so far.
struct Client {
    id: usize,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    sent: usize,
    sent_at: Instant,
}

/// What one thread measured.
#[derive(Default)]
struct Tally {
    latencies: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }
}

/// Runs `ids` clients on one thread with epoll: the way wrk works, so that
/// the generator's own cost stays small next to the server's.
#[cfg(target_os = "linux")]
fn event_loop(
    ids: Vec<usize>,
    target: &Target,
    reqs: &Requests,
    timeout: Duration,
    deadline: Instant,
    max: u64,
    done: &AtomicU64,
) -> Tally {
    use std::os::fd::AsRawFd;
    let mut tally = Tally::default();
    // SAFETY: plain syscall; the fd is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        tally.error("epoll");
        return tally;
    }
    let mut clients: Vec<Client> = ids
        .into_iter()
        .map(|id| Client {
            id,
            stream: None,
            buf: Vec::with_capacity(4096),
            sent: 0,
            sent_at: Instant::now(),
        })
        .collect();
    let mut scratch = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; clients.len().max(1)];
    let mut read_buf = vec![0u8; 256 * 1024];

    // Connects (if needed) and sends the client's next request; false when
    // the run is over for it.
    let send = |c: &mut Client, scratch: &mut Vec<u8>, tally: &mut Tally| -> bool {
        if Instant::now() >= deadline || done.fetch_add(1, Ordering::Relaxed) >= max {
            return false;
        }
        if c.stream.is_none() {
            match warm_connection(target, reqs, timeout) {
                Some(s) => {
                    let _ = s.set_nonblocking(true);
                    let mut ev = libc::epoll_event {
                        events: libc::EPOLLIN as u32,
                        u64: c.id as u64,
                    };
                    // SAFETY: registers a live fd with our epoll instance.
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
                    c.stream = Some(s);
                }
                None => {
                    tally.error("connect");
                    return true;
                }
            }
        }
        let req = reqs.nth(c.id, c.sent, scratch);
        c.sent += 1;
        c.buf.clear();
        c.sent_at = Instant::now();
        let stream = c.stream.as_mut().expect("connected above");
        // A request of a few hundred bytes fits an empty send buffer.
        if !matches!(stream.write(req), Ok(n) if n == req.len()) {
            tally.error("write");
            c.stream = None;
        }
        true
    };

    let base = clients.first().map_or(0, |c| c.id);
    let mut live = 0usize;
    for c in clients.iter_mut() {
        if send(c, &mut scratch, &mut tally) {
            live += 1;
        }
    }
    while live > 0 {
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let c = &mut clients[ev.u64 as usize - base];
            let Some(stream) = c.stream.as_mut() else {
                continue;
            };
            let mut failed = None;
            loop {
                match stream.read(&mut read_buf) {
                    Ok(0) => {
                        failed = Some("closed");
                        break;
                    }
                    Ok(k) => c.buf.extend_from_slice(&read_buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        failed = Some("read");
                        break;
                    }
                }
            }
            let finished = match answer_status(&c.buf) {
                Some(Ok(status)) => Some(status),
                Some(Err(())) => {
                    failed = Some("bad answer");
                    None
                }
                None => None,
            };
            if let Some(status) = finished {
                if (200..300).contains(&status) {
                    tally
                        .latencies
                        .push(u32::try_from(c.sent_at.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    tally.error(&format!("status {status}"));
                }
            } else if let Some(kind) = failed {
                tally.error(kind);
                c.stream = None;
            } else {
                continue; // the answer is not complete yet
            }
            if !send(c, &mut scratch, &mut tally) {
                live -= 1;
            }
        }
        // Answers overdue beyond the timeout count as timeouts.
        for c in clients.iter_mut() {
            if c.stream.is_some() && c.sent_at.elapsed() > timeout {
                tally.error("timeout");
                c.stream = None;
                if !send(c, &mut scratch, &mut tally) {
                    live -= 1;
                }
            }
        }
        if Instant::now() > deadline + timeout {
            break;
        }
    }
    // SAFETY: closing the epoll fd created above.
    unsafe { libc::close(ep) };
    tally
}

/// Elsewhere: one blocking exchange at a time per client, in turn.
#[cfg(not(target_os = "linux"))]
fn event_loop(
    ids: Vec<usize>,
    target: &Target,
    reqs: &Requests,
    timeout: Duration,
    deadline: Instant,
    max: u64,
    done: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let mut scratch = Vec::new();
    let mut conns: Vec<Option<Conn>> = ids.iter().map(|_| None).collect();
    let mut i = 0;
    while Instant::now() < deadline && done.fetch_add(1, Ordering::Relaxed) < max {
        let k = i % ids.len();
        i += 1;
        let c = match conns[k].as_mut() {
            Some(c) => c,
            None => match Conn::open(target, timeout) {
                Ok(c) => conns[k].insert(c),
                Err(_) => {
                    tally.error("connect");
                    continue;
                }
            },
        };
        let t = Instant::now();
        match c.exchange(reqs.nth(ids[k], i, &mut scratch)) {
            Outcome::Status(s) if (200..300).contains(&s) => tally
                .latencies
                .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Outcome::Status(s) => tally.error(&format!("status {s}")),
            Outcome::Failed(what) => {
                tally.error(what);
                conns[k] = None;
            }
        }
    }
    tally
}

/// A new connection that has completed one GET (not counted), or `None`.
///
/// Why: connections opened all at once can meet tiny_http's lost wake-up
/// (a server without regcenter's guard may never answer some of them), so
/// each is opened and proven before the measured load starts.
fn warm_connection(target: &Target, reqs: &Requests, timeout: Duration) -> Option<TcpStream> {
    for _ in 0..3 {
        let Ok(mut c) = Conn::open(target, timeout.min(Duration::from_secs(1))) else {
            continue;
        };
        if let Outcome::Status(_) = c.exchange(&reqs.get) {
            let stream = c.reader.into_inner();
            let _ = stream.set_read_timeout(None);
            return Some(stream);
        }
    }
    None
}

/// The status of a complete answer in `buf`, `None` while incomplete.
fn answer_status(buf: &[u8]) -> Option<Result<u16, ()>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ()).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse::<u16>().ok()?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + 4 + length).then_some(Ok(status))
}

/// The outcome of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Successful requests.
    pub requests: u64,
    /// Failed requests by kind (`connect`, `timeout`, `read`, `status 503`, …).
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
