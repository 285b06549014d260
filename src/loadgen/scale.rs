//! The large deployment on one machine ([`ScaleOptions`]): many servers in
//! many services renewing on a period, watchers long-polling each service
//! with `delta=1`, and a steady rate of membership changes. It measures how
//! long each change takes to reach every watcher of its service and, given
//! the registry's process (Linux), what the registry costs: CPU, resident
//! memory, threads and descriptors.
//!
//! Three threads make the load, so that the generator stays cheap next to
//! the registry it measures: `loadgen-scale-beat` renews every server once
//! a period (datagrams on one socket, or POSTs over a few kept-alive
//! connections), `loadgen-scale-watch` drives every watcher's connection
//! with epoll, and `loadgen-scale-change` registers and deregisters one
//! extra server per service in turn, blocking on each answer.
//!
//! A watcher's answer whose index moved is a change seen. Heartbeats change
//! no index and each service has at most one change in flight (a service
//! changes once every `services / rate` seconds), so such an answer belongs
//! to the latest change of its service made before it arrived; one that
//! follows no change (an expiry, say) counts as an error.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::conn::{Conn, Requests, Target};
use super::{Progress, server_addr};
use crate::error::{Error, Result};
use crate::protocol::{format_duration, validate_service};
use crate::server::udp::{self as wire, Code};

/// How the servers of a scale run renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beats {
    /// By datagram, to the UDP port the registry's POST answer advertises.
    Udp,
    /// By HTTP POST, over a few kept-alive connections
    /// ([`ScaleOptions::beat_connections`]).
    Http,
}

impl std::str::FromStr for Beats {
    type Err = Error;

    fn from_str(s: &str) -> Result<Beats> {
        match s {
            "udp" => Ok(Beats::Udp),
            "http" => Ok(Beats::Http),
            _ => Err(Error::config("beats", format!("{s:?}: use udp or http"))),
        }
    }
}

/// Settings of one scale run. The defaults are the deployment the
/// performance document measures: 10 000 servers in 100 services renewing
/// by datagram every 5 s with a 15 s TTL, 1 000 watchers, 10 changes a
/// second, for 60 s.
///
/// Descriptors: the generator holds one per watcher and per beat
/// connection, and the run raises its soft `RLIMIT_NOFILE` to what it
/// needs (up to the hard limit; beyond it the run is refused). The
/// registry holds two per connection and a thread: for 1 000 watchers it
/// needs a limit above about 2 100, which a registry started from the same
/// shell inherits (`ulimit -n 8192`).
#[derive(Debug, Clone)]
#[must_use]
pub struct ScaleOptions {
    registry: String,
    servers: usize,
    services: usize,
    watchers: usize,
    changes: u32,
    period: Duration,
    ttl: Duration,
    beats: Beats,
    beat_connections: usize,
    duration: Duration,
    timeout: Duration,
    registry_pid: Option<u32>,
    token: Option<String>,
}

impl ScaleOptions {
    /// A run against the registry URL (e.g. `http://127.0.0.1:9999/myRPC/registry`).
    pub fn new(registry: &str) -> ScaleOptions {
        ScaleOptions {
            registry: registry.trim_end_matches('/').to_string(),
            servers: 10_000,
            services: 100,
            watchers: 1_000,
            changes: 10,
            period: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            beats: Beats::Udp,
            beat_connections: 16,
            duration: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            registry_pid: None,
            token: None,
        }
    }

    /// Servers that renew, spread evenly over the services (named
    /// `scale-0`, `scale-1`, …). Defaults to 10 000.
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    /// Services. Defaults to 100.
    pub fn services(mut self, n: usize) -> Self {
        self.services = n;
        self
    }

    /// Watchers, spread evenly over the services: one connection each,
    /// long-polling with `delta=1`. Defaults to 1 000.
    pub fn watchers(mut self, n: usize) -> Self {
        self.watchers = n;
        self
    }

    /// Membership changes a second: a register or a deregister of one
    /// extra server per service, the services in turn. Defaults to 10.
    pub fn changes_per_second(mut self, n: u32) -> Self {
        self.changes = n;
        self
    }

    /// How often each server renews. Defaults to 5 s.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// The TTL the servers register with. Defaults to 15 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How the servers renew. Defaults to [`Beats::Udp`].
    pub fn beats(mut self, beats: Beats) -> Self {
        self.beats = beats;
        self
    }

    /// Kept-alive connections that carry the renewals with [`Beats::Http`].
    /// Defaults to 16.
    pub fn beat_connections(mut self, n: usize) -> Self {
        self.beat_connections = n;
        self
    }

    /// How long changes are made, after the servers are registered and the
    /// watchers parked. Defaults to 60 s.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Bound of each connect, read and write. Defaults to 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The registry's process, whose CPU, memory, threads and descriptors
    /// the run reads from `/proc` (Linux). Defaults to none: the report
    /// then has no registry figures.
    pub fn registry_pid(mut self, pid: Option<u32>) -> Self {
        self.registry_pid = pid;
        self
    }

    /// The registry's bearer token, sent with every write. Defaults to
    /// none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Registers the servers, parks the watchers, makes the changes for the
    /// duration while the servers renew, then removes every server.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a URL that is not `http://host:port/path`,
    /// no service, fewer servers than services, a period not below the TTL,
    /// a descriptor limit too low for the watchers, no UDP port advertised
    /// with [`Beats::Udp`], or a system other than Linux;
    /// [`Error::Unreachable`] or [`Error::Status`] when registering the
    /// servers fails; [`Error::Io`] when a load thread cannot be spawned
    /// (those already started are stopped and joined first).
    pub fn run(&self) -> Result<ScaleReport> {
        self.run_with_progress(|_| {})
    }

    /// [`run`](Self::run), calling `on_tick` on the calling thread once a
    /// second while changes are made, with the changes made so far.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_with_progress(&self, mut on_tick: impl FnMut(Progress)) -> Result<ScaleReport> {
        if !cfg!(target_os = "linux") {
            return Err(Error::config("op", "scale runs on Linux only (epoll)"));
        }
        if self.services == 0 || self.servers < self.services {
            return Err(Error::config(
                "servers",
                format!(
                    "{} servers in {} services: use at least one service and one server each",
                    self.servers, self.services
                ),
            ));
        }
        if self.period.is_zero() || self.period >= self.ttl {
            return Err(Error::config(
                "period",
                format!(
                    "{:?} with a TTL of {:?}: renew more often than the TTL",
                    self.period, self.ttl
                ),
            ));
        }
        let conns = match self.beats {
            Beats::Udp => 0,
            Beats::Http => self.beat_connections.max(1),
        };
        raise_descriptor_limit(self.watchers + conns + 64)?;
        let targets = self.targets()?;
        let setup_started = Instant::now();
        let mut setup = Conn::open(&targets[0], self.timeout)?;
        let ttl = format_duration(self.ttl);
        for i in 0..self.servers {
            let t = &targets[i % self.services];
            setup.expect_ok(t, &Requests::post(t, &server_addr(i), &ttl))?;
        }
        let udp = match self.beats {
            Beats::Udp => Some(SocketAddr::new(
                targets[0].ip(),
                super::advertised_udp_port(
                    &targets[0],
                    &server_addr(0),
                    &ttl,
                    self.token.as_deref(),
                    self.timeout,
                )?,
            )),
            Beats::Http => None,
        };
        let registered = setup_started.elapsed();
        let outcome = self.measure(&targets, udp, conns, &mut on_tick);
        // The servers go again whether or not the run went through: the
        // churned ones are removed by the changer itself.
        for i in 0..self.servers {
            let t = &targets[i % self.services];
            let _ = setup.delete(t, &server_addr(i));
        }
        let mut report = outcome?;
        report.registered = registered;
        Ok(report)
    }

    fn targets(&self) -> Result<Vec<Target>> {
        (0..self.services)
            .map(|s| {
                let name = service_name(s);
                validate_service(&name)?;
                let mut t = Target::parse(&self.registry, &name)?;
                if let Some(token) = &self.token {
                    crate::client::validate_token(token)?;
                    t.head = format!("{}\r\nAuthorization: Bearer {token}", t.host);
                }
                Ok(t)
            })
            .collect()
    }

    /// The run once the servers are registered: starts the three threads,
    /// samples the registry while changes are made, stops and joins them.
    fn measure(
        &self,
        targets: &[Target],
        udp: Option<SocketAddr>,
        conns: usize,
        on_tick: &mut dyn FnMut(Progress),
    ) -> Result<ScaleReport> {
        let shared = Arc::new(Shared::default());
        let mut beat = None;
        let mut watch = None;
        let started = (|| -> Result<()> {
            let (s, t) = (shared.clone(), targets.to_vec());
            let (servers, period, timeout) = (self.servers, self.period, self.timeout);
            let token = self.token.clone().map(String::into_bytes);
            let ttl = format_duration(self.ttl);
            beat = Some(spawn("loadgen-scale-beat", move || match udp {
                Some(to) => udp_beats(to, &t, servers, period, token.as_deref(), timeout, &s),
                None => http_beats(&t, servers, &ttl, period, conns, timeout, &s),
            })?);
            let (s, t, n) = (shared.clone(), targets.to_vec(), self.watchers);
            let timeout = self.timeout;
            watch = Some(spawn("loadgen-scale-watch", move || {
                watch_loop(&t, n, timeout, &s)
            })?);
            Ok(())
        })();
        let stop_all = |beat: Option<thread::JoinHandle<Tally>>,
                        watch: Option<thread::JoinHandle<WatchTally>>| {
            shared.stop.store(true, Ordering::Release);
            let b = beat
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            let w = watch
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            (b, w)
        };
        if let Err(e) = started {
            stop_all(beat, watch);
            return Err(e);
        }
        // Bounded: the watcher thread opens each connection within the
        // timeout, or ends.
        let parked_by = Instant::now() + self.timeout * 2 + Duration::from_secs(60);
        while shared.ready.load(Ordering::Acquire) < self.watchers as u64
            && watch.as_ref().is_some_and(|w| !w.is_finished())
            && Instant::now() < parked_by
        {
            thread::sleep(Duration::from_millis(20));
        }
        // Lets the last long-polls reach the registry and park.
        thread::sleep(Duration::from_millis(500));

        let before = self.registry_pid.and_then(sample);
        let me = sample(std::process::id());
        let window = Instant::now();
        let (s, t) = (shared.clone(), targets.to_vec());
        let (servers, rate, duration, timeout) =
            (self.servers, self.changes, self.duration, self.timeout);
        let change = match spawn("loadgen-scale-change", move || {
            change_loop(&t, servers, rate, duration, timeout, &s)
        }) {
            Ok(h) => Some(h),
            Err(e) => {
                stop_all(beat, watch);
                return Err(e);
            }
        };
        let mut peak = Peak::default();
        let mut last = 0;
        // Bounded: the changer ends after the duration and one timeout.
        while change.as_ref().is_some_and(|c| !c.is_finished()) {
            thread::sleep(Duration::from_millis(100));
            let elapsed = window.elapsed();
            if elapsed.as_secs() > last {
                last = elapsed.as_secs();
                if let Some(now) = self.registry_pid.and_then(sample) {
                    peak.take(&now);
                }
                on_tick(Progress {
                    elapsed,
                    requests: shared.changes.load(Ordering::Relaxed),
                });
            }
        }
        let changes = change
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let wall = window.elapsed();
        let after = self.registry_pid.and_then(sample);
        let me_after = sample(std::process::id());
        // Answers still on their way count for the changes made, up to a
        // bound.
        let expected: u64 = changes
            .made
            .iter()
            .map(|c| watchers_of(c.service, self.watchers, self.services) as u64)
            .sum();
        let grace = Instant::now() + Duration::from_secs(5);
        while shared.seen.load(Ordering::Acquire) < expected && Instant::now() < grace {
            thread::sleep(Duration::from_millis(10));
        }
        let (beats, watched) = stop_all(beat, watch);
        // Once no watcher can see it.
        if let Ok(mut conn) = Conn::open(&targets[0], self.timeout) {
            for &s in &changes.left {
                let _ = conn.delete(&targets[s], &server_addr(self.servers + s));
            }
        }

        let mut errors = BTreeMap::new();
        for (k, v) in beats
            .errors
            .iter()
            .chain(&watched.errors)
            .chain(&changes.errors)
        {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        let (mut from_ack, mut from_request, seen) =
            propagation(&changes.made, &watched.seen, &mut errors);
        if seen < expected {
            *errors.entry("change not seen".into()).or_insert(0) += expected - seen;
        }
        from_ack.sort_unstable();
        from_request.sort_unstable();
        let registry = match (before, after) {
            (Some(b), Some(a)) => {
                peak.take(&a);
                Some(ProcessFigures::between(&b, &a, wall, &peak))
            }
            _ => None,
        };
        let generator = match (me, me_after) {
            (Some(b), Some(a)) => Some(ProcessFigures::between(&b, &a, wall, &Peak::from(&a))),
            _ => None,
        };
        let mut beat_latency = beats.latencies;
        beat_latency.sort_unstable();
        Ok(ScaleReport {
            servers: self.servers,
            services: self.services,
            watchers: self.watchers,
            rate: self.changes,
            beats: self.beats,
            period: self.period,
            ttl: self.ttl,
            registered: Duration::ZERO,
            elapsed: wall,
            changes: changes.made.len() as u64,
            expected,
            seen,
            renewals: beats.acked,
            renewing: beats.ran,
            udp_drops: beats.drops,
            beat_p99: pct(&beat_latency, 0.99),
            p50: pct(&from_ack, 0.50),
            p99: pct(&from_ack, 0.99),
            max: pct(&from_ack, 1.0),
            request_p50: pct(&from_request, 0.50),
            request_p99: pct(&from_request, 0.99),
            registry,
            registry_pid: self.registry_pid,
            generator,
            errors,
        })
    }
}

/// What the threads of a run share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Watchers with their first listing, parked or about to be.
    ready: AtomicU64,
    /// Changes seen by watchers so far.
    seen: AtomicU64,
    /// Changes made so far.
    changes: AtomicU64,
}

/// Renewals acknowledged, their latencies (from when they were due, µs;
/// HTTP only) and errors.
#[derive(Default)]
struct Tally {
    /// How long the thread renewed.
    ran: Duration,
    acked: u64,
    latencies: Vec<u32>,
    /// Datagrams the kernel dropped at the registry's UDP socket and at
    /// the generator's, when readable (Linux).
    drops: Option<(u64, u64)>,
    errors: BTreeMap<String, u64>,
}

fn error(errors: &mut BTreeMap<String, u64>, kind: &str) {
    *errors.entry(kind.to_string()).or_insert(0) += 1;
}

/// The name of the `s`-th service of a run.
fn service_name(s: usize) -> String {
    format!("scale-{s}")
}

/// How many of `watchers` watch service `s` (watcher `w` watches
/// `w % services`).
fn watchers_of(s: usize, watchers: usize, services: usize) -> usize {
    watchers / services + usize::from(s < watchers % services)
}

fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map_err(|e| Error::io("spawn a load thread", e))
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn pct(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    Duration::from_micros(sorted_us[i].into())
}

/// When beat `j` of a run is due: servers renew in turn, evenly spread
/// over the period.
fn due(start: Instant, period: Duration, servers: usize, j: u64) -> Instant {
    start + period.mul_f64(j as f64 / servers as f64)
}

/// Renews every server once a period by datagram, on one socket.
fn udp_beats(
    to: SocketAddr,
    targets: &[Target],
    servers: usize,
    period: Duration,
    token: Option<&[u8]>,
    timeout: Duration,
    shared: &Shared,
) -> Tally {
    let mut tally = Tally::default();
    let socket = match std::net::UdpSocket::bind(SocketAddr::new(to.ip(), 0)).and_then(|s| {
        s.connect(to)?;
        // Room for the replies of a second of renewals, so that a moment
        // off the CPU loses none here (the kernel caps it at rmem_max).
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
        Ok(s)
    }) {
        Ok(s) => s,
        Err(_) => {
            error(&mut tally.errors, "udp socket");
            return tally;
        }
    };
    let names: Vec<String> = (0..targets.len()).map(service_name).collect();
    let own = socket.local_addr().map_or(0, |a| a.port());
    let drops_before = (udp_drops(to.port()), udp_drops(own));
    let mut buf = Vec::with_capacity(wire::MAX_REQUEST);
    let mut reply = [0u8; wire::REPLY_LEN + 1];
    let (mut sent, mut answered) = (0u64, 0u64);
    let start = Instant::now();
    let mut stamp = 0u64;
    let take = |reply: &[u8], tally: &mut Tally, answered: &mut u64| {
        *answered += 1;
        match wire::decode_reply(reply) {
            Some((Code::Renewed, _)) => tally.acked += 1,
            Some((Code::Unknown, _)) => error(&mut tally.errors, "renewal of an unknown server"),
            Some((Code::Refused, _)) => error(&mut tally.errors, "renewal refused"),
            None => error(&mut tally.errors, "bad datagram answer"),
        }
    };
    // Bounded: ends at the stop, then waits for what is in flight for one
    // timeout at most.
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        while due(start, period, servers, sent) <= now {
            let i = (sent % servers as u64) as usize;
            // With a token, each server's stamps must grow: one clock for
            // all of them, bumped past the last, does.
            stamp = wire::unix_ms().max(stamp + 1);
            wire::encode(
                &mut buf,
                &names[i % names.len()],
                &server_addr(i),
                stamp,
                token,
            );
            if socket.send(&buf).is_err() {
                error(&mut tally.errors, "udp send");
            }
            sent += 1;
        }
        let next = due(start, period, servers, sent).saturating_duration_since(Instant::now());
        let wait = next.clamp(Duration::from_millis(1), Duration::from_millis(20));
        let _ = socket.set_read_timeout(Some(wait));
        if let Ok(n) = socket.recv(&mut reply) {
            take(&reply[..n], &mut tally, &mut answered);
        }
    }
    let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
    let end = Instant::now() + timeout;
    while answered < sent && Instant::now() < end {
        if let Ok(n) = socket.recv(&mut reply) {
            take(&reply[..n], &mut tally, &mut answered);
        }
    }
    if sent > answered {
        *tally.errors.entry("renewal unanswered".into()).or_insert(0) += sent - answered;
    }
    tally.ran = start.elapsed();
    tally.drops = match (drops_before, (udp_drops(to.port()), udp_drops(own))) {
        ((Some(r0), Some(o0)), (Some(r1), Some(o1))) => {
            Some((r1.saturating_sub(r0), o1.saturating_sub(o0)))
        }
        _ => None,
    };
    tally
}

/// Datagrams dropped so far by the UDP sockets on local `port` (the drops
/// column of `/proc/net/udp{,6}`), `None` when there is none (or not on
/// Linux).
fn udp_drops(port: u16) -> Option<u64> {
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local == Some(port)
                && let Some(d) = f.last().and_then(|d| d.parse::<u64>().ok())
            {
                *total.get_or_insert(0) += d;
            }
        }
    }
    total
}

/// One connection of the HTTP beats: idle, or waiting for the answer to a
/// renewal due at `due`.
struct BeatConn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    due: Option<Instant>,
    sent_at: Instant,
}

/// Renews every server once a period by POST, over `conns` kept-alive
/// connections; a renewal waits for an idle connection, and its latency
/// runs from when it was due, so a queue shows.
fn http_beats(
    targets: &[Target],
    servers: usize,
    ttl: &str,
    period: Duration,
    conns: usize,
    timeout: Duration,
    shared: &Shared,
) -> Tally {
    let mut tally = Tally::default();
    let Some(ep) = Epoll::new() else {
        error(&mut tally.errors, "epoll");
        return tally;
    };
    let posts: Vec<Vec<u8>> = (0..servers)
        .map(|i| {
            let t = &targets[i % targets.len()];
            Requests::post(t, &server_addr(i), ttl)
        })
        .collect();
    let mut cs: Vec<BeatConn> = (0..conns)
        .map(|_| BeatConn {
            stream: None,
            buf: Vec::with_capacity(1024),
            due: None,
            sent_at: Instant::now(),
        })
        .collect();
    let mut queue: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut read_buf = vec![0u8; 16 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns];
    let start = Instant::now();
    let mut j = 0u64;
    let mut stopping: Option<Instant> = None;
    // Bounded: after the stop, what is in flight gets one timeout.
    loop {
        if stopping.is_none() && shared.stop.load(Ordering::Acquire) {
            stopping = Some(Instant::now() + timeout);
        }
        match stopping {
            Some(end) if cs.iter().all(|c| c.due.is_none()) || Instant::now() > end => break,
            Some(_) => {}
            None => {
                let now = Instant::now();
                while due(start, period, servers, j) <= now {
                    queue.push_back((
                        (j % servers as u64) as usize,
                        due(start, period, servers, j),
                    ));
                    j += 1;
                }
                for (k, c) in cs.iter_mut().enumerate() {
                    if c.due.is_some() {
                        continue;
                    }
                    let Some((i, at)) = queue.pop_front() else {
                        break;
                    };
                    if c.stream.is_none() {
                        c.stream = connect(&targets[0], timeout, &ep, k as u64);
                    }
                    let Some(s) = c.stream.as_mut() else {
                        error(&mut tally.errors, "connect");
                        continue;
                    };
                    c.buf.clear();
                    c.sent_at = Instant::now();
                    if matches!(s.write(&posts[i]), Ok(n) if n == posts[i].len()) {
                        c.due = Some(at);
                    } else {
                        error(&mut tally.errors, "write");
                        c.stream = None;
                    }
                }
            }
        }
        let n = ep.wait(&mut events, 2);
        for ev in &events[..n] {
            let c = &mut cs[ev.u64 as usize];
            let Some(s) = c.stream.as_mut() else { continue };
            match read_answer(s, &mut c.buf, &mut read_buf) {
                Reading::More => {}
                Reading::Failed(kind) => {
                    error(&mut tally.errors, kind);
                    c.stream = None;
                    c.due = None;
                }
                Reading::Answer(a) => {
                    if (200..300).contains(&a.status) {
                        tally.acked += 1;
                        if let Some(at) = c.due {
                            tally.latencies.push(micros(at.elapsed()));
                        }
                    } else {
                        error(&mut tally.errors, &format!("renewal status {}", a.status));
                    }
                    c.due = None;
                }
            }
        }
        for c in cs.iter_mut() {
            if c.due.is_some() && c.sent_at.elapsed() > timeout {
                error(&mut tally.errors, "renewal timeout");
                c.stream = None;
                c.due = None;
            }
        }
    }
    tally.ran = start.elapsed();
    tally
}

/// What the watcher thread saw: for every answer whose index moved, the
/// service and when it arrived.
#[derive(Default)]
struct WatchTally {
    seen: Vec<(usize, Instant)>,
    errors: BTreeMap<String, u64>,
}

/// One watcher: its connection, service, index and the answer read so far.
struct Watcher {
    service: usize,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    index: u64,
}

/// Opens every watcher with a listing (blocking, one after the other), then
/// long-polls each with `delta=1` from one epoll thread until the stop.
fn watch_loop(
    targets: &[Target],
    watchers: usize,
    timeout: Duration,
    shared: &Shared,
) -> WatchTally {
    let mut tally = WatchTally::default();
    let Some(ep) = Epoll::new() else {
        error(&mut tally.errors, "epoll");
        return tally;
    };
    let poll = |w: &Watcher| {
        format!(
            "GET {}?format=json&delta=1&index={}&wait=20s HTTP/1.1\r\nHost: {}\r\n\r\n",
            targets[w.service].path, w.index, targets[w.service].host
        )
    };
    let mut ws: Vec<Watcher> = Vec::with_capacity(watchers);
    let mut read_buf = vec![0u8; 64 * 1024];
    for k in 0..watchers {
        if shared.stop.load(Ordering::Acquire) {
            return tally;
        }
        let service = k % targets.len();
        let t = &targets[service];
        let mut w = Watcher {
            service,
            stream: None,
            buf: Vec::with_capacity(4096),
            index: 0,
        };
        match first_listing(t, timeout) {
            Ok((s, index)) => {
                w.index = index;
                ep.add(&s, k as u64);
                w.stream = Some(s);
            }
            Err(kind) => error(&mut tally.errors, kind),
        }
        ws.push(w);
        shared.ready.fetch_add(1, Ordering::Release);
    }
    for w in ws.iter_mut() {
        let req = poll(w);
        if let Some(s) = w.stream.as_mut()
            && s.write_all(req.as_bytes()).is_err()
        {
            error(&mut tally.errors, "watch write");
            w.stream = None;
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; watchers.max(1)];
    // Bounded: ends at the stop; every wait is 50 ms at most.
    while !shared.stop.load(Ordering::Acquire) {
        let n = ep.wait(&mut events, 50);
        let now = Instant::now();
        for ev in &events[..n] {
            let w = &mut ws[ev.u64 as usize];
            let Some(s) = w.stream.as_mut() else { continue };
            match read_answer(s, &mut w.buf, &mut read_buf) {
                Reading::More => continue,
                Reading::Failed(kind) => {
                    error(&mut tally.errors, kind);
                    w.stream = None;
                    continue;
                }
                Reading::Answer(a) if a.status != 200 => {
                    // A watcher refused (503: too many) stays down rather
                    // than spinning on refusals.
                    error(&mut tally.errors, &format!("watch status {}", a.status));
                    w.stream = None;
                    continue;
                }
                Reading::Answer(a) => {
                    if let Some(index) = a.index
                        && index != w.index
                    {
                        tally.seen.push((w.service, now));
                        shared.seen.fetch_add(1, Ordering::Release);
                        w.index = index;
                    }
                }
            }
            w.buf.clear();
            let req = poll(w);
            if let Some(s) = w.stream.as_mut()
                && s.write_all(req.as_bytes()).is_err()
            {
                error(&mut tally.errors, "watch write");
                w.stream = None;
            }
        }
    }
    tally
}

/// A new connection that has read the service's listing: the connection
/// (non-blocking, for epoll) and the listing's index.
fn first_listing(
    t: &Target,
    timeout: Duration,
) -> std::result::Result<(TcpStream, u64), &'static str> {
    let mut s = TcpStream::connect_timeout(&t.addr(), timeout).map_err(|_| "watch connect")?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(timeout));
    let req = format!(
        "GET {}?format=json HTTP/1.1\r\nHost: {}\r\n\r\n",
        t.path, t.host
    );
    s.write_all(req.as_bytes()).map_err(|_| "watch write")?;
    let (mut buf, mut chunk) = (Vec::with_capacity(16 * 1024), vec![0u8; 64 * 1024]);
    let deadline = Instant::now() + timeout;
    // Bounded: each read waits one timeout at most, and the answer must
    // be whole within one timeout.
    loop {
        if Instant::now() > deadline {
            return Err("watch timeout");
        }
        match read_answer(&mut s, &mut buf, &mut chunk) {
            Reading::Answer(a) if a.status == 200 => {
                let index = a.index.ok_or("watch answer without an index")?;
                s.set_nonblocking(true).map_err(|_| "watch connect")?;
                return Ok((s, index));
            }
            Reading::Answer(_) => return Err("watch listing refused"),
            Reading::Failed(kind) => return Err(kind),
            Reading::More => {}
        }
    }
}

/// One change made: its service, when its request went and when its
/// answer came.
#[derive(Clone, Copy)]
struct Change {
    service: usize,
    sent: Instant,
    acked: Instant,
}

#[derive(Default)]
struct Changes {
    made: Vec<Change>,
    /// Services whose extra server is registered at the end.
    left: Vec<usize>,
    errors: BTreeMap<String, u64>,
}

/// Registers and deregisters server `servers + s` of each service `s` in
/// turn, `rate` times a second for `duration`, over one blocking
/// connection; says which are left registered at the end.
fn change_loop(
    targets: &[Target],
    servers: usize,
    rate: u32,
    duration: Duration,
    timeout: Duration,
    shared: &Shared,
) -> Changes {
    let mut out = Changes::default();
    if rate == 0 {
        return out;
    }
    let mut conn = match Conn::open(&targets[0], timeout) {
        Ok(c) => c,
        Err(_) => {
            error(&mut out.errors, "change connect");
            return out;
        }
    };
    let mut present = vec![false; targets.len()];
    let start = Instant::now();
    let every = Duration::from_secs(1) / rate;
    let mut k = 0usize;
    // Bounded: one change a step until the duration has passed.
    while start.elapsed() < duration && !shared.stop.load(Ordering::Acquire) {
        let s = k % targets.len();
        let addr = server_addr(servers + s);
        let sent = Instant::now();
        let done = if present[s] {
            conn.delete(&targets[s], &addr)
        } else {
            conn.expect_ok(&targets[s], &Requests::post(&targets[s], &addr, "1h"))
        };
        match done {
            Ok(()) => {
                present[s] = !present[s];
                out.made.push(Change {
                    service: s,
                    sent,
                    acked: Instant::now(),
                });
                shared.changes.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                error(&mut out.errors, "change failed");
                if let Ok(c) = Conn::open(&targets[0], timeout) {
                    conn = c;
                }
            }
        }
        k += 1;
        thread::sleep((start + every * k as u32).saturating_duration_since(Instant::now()));
    }
    out.left = present
        .iter()
        .enumerate()
        .filter_map(|(s, on)| on.then_some(s))
        .collect();
    out
}

/// Matches each change a watcher saw with the latest change of its service
/// made before it arrived: the time from that change's answer (zero when
/// the watcher saw it first) and from its request, in µs, and how many
/// were matched. An answer that follows no change is an error.
fn propagation(
    made: &[Change],
    seen: &[(usize, Instant)],
    errors: &mut BTreeMap<String, u64>,
) -> (Vec<u32>, Vec<u32>, u64) {
    let mut by_service: BTreeMap<usize, Vec<&Change>> = BTreeMap::new();
    for c in made {
        by_service.entry(c.service).or_default().push(c);
    }
    let (mut from_ack, mut from_request, mut matched) = (Vec::new(), Vec::new(), 0);
    for (s, at) in seen {
        let change = by_service
            .get(s)
            .and_then(|cs| cs.iter().rev().find(|c| c.sent <= *at));
        match change {
            Some(c) => {
                from_ack.push(micros(at.saturating_duration_since(c.acked)));
                from_request.push(micros(at.saturating_duration_since(c.sent)));
                matched += 1;
            }
            None => error(errors, "change nobody made"),
        }
    }
    (from_ack, from_request, matched)
}

/// A whole answer's status and `X-Myrpc-Index`.
struct Answer {
    status: u16,
    index: Option<u64>,
}

/// How a read of an answer went.
enum Reading {
    /// Not all of it yet.
    More,
    Answer(Answer),
    Failed(&'static str),
}

/// Reads what `s` has into `buf` (until it would block, or once when
/// blocking) and says whether a whole answer is there.
fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> Reading {
    loop {
        match s.read(chunk) {
            Ok(0) => return Reading::Failed("closed"),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse(buf) {
                    return r;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return parse(buf).unwrap_or(Reading::More);
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Reading::Failed("timeout");
            }
            Err(_) => return Reading::Failed("read"),
        }
    }
}

/// The answer in `buf` when it is whole (or malformed), `None` while it is
/// still arriving.
fn parse(buf: &[u8]) -> Option<Reading> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Some(Reading::Failed("bad answer"));
    };
    let mut lines = head.split("\r\n");
    let Some(status) = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return Some(Reading::Failed("bad answer"));
    };
    let (mut length, mut index) = (0usize, None);
    for (n, v) in lines.filter_map(|l| l.split_once(':')) {
        if n.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().unwrap_or(0);
        } else if n.eq_ignore_ascii_case(crate::protocol::HEADER_INDEX) {
            index = v.trim().parse().ok();
        }
    }
    (buf.len() >= end + 4 + length).then_some(Reading::Answer(Answer { status, index }))
}

/// A non-blocking connection registered with `ep` under `key`.
fn connect(t: &Target, timeout: Duration, ep: &Epoll, key: u64) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&t.addr(), timeout).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_nonblocking(true).ok()?;
    ep.add(&s, key);
    Some(s)
}

/// An epoll instance, closed on drop (Linux).
struct Epoll(i32);

impl Epoll {
    #[cfg(target_os = "linux")]
    fn new() -> Option<Epoll> {
        // SAFETY: plain syscall; the fd is closed on drop.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        (fd >= 0).then_some(Epoll(fd))
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> Option<Epoll> {
        None
    }

    #[cfg(target_os = "linux")]
    fn add(&self, s: &TcpStream, key: u64) {
        use std::os::fd::AsRawFd;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: registers a live fd with our epoll instance; the kernel
        // drops it from the set when the socket is closed.
        unsafe { libc::epoll_ctl(self.0, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }

    #[cfg(not(target_os = "linux"))]
    fn add(&self, _: &TcpStream, _: u64) {}

    /// Waits up to `ms` for events into `events`; how many came.
    #[cfg(target_os = "linux")]
    fn wait(&self, events: &mut [libc::epoll_event], ms: i32) -> usize {
        let cap = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` has room for `cap` entries.
        let n = unsafe { libc::epoll_wait(self.0, events.as_mut_ptr(), cap, ms) };
        usize::try_from(n).unwrap_or(0)
    }

    #[cfg(not(target_os = "linux"))]
    fn wait(&self, _: &mut [libc::epoll_event], _: i32) -> usize {
        0
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: closes the fd this value owns, once.
        unsafe { libc::close(self.0) };
    }
}

/// Raises this process's soft descriptor limit to at least `needed`, up to
/// the hard limit.
fn raise_descriptor_limit(needed: usize) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    let needed = needed as libc::rlim_t;
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    if lim.rlim_max < needed {
        return Err(Error::config(
            "watchers",
            format!(
                "they need {needed} descriptors and the hard limit is {}: raise it (ulimit -Hn) or watch with fewer",
                lim.rlim_max
            ),
        ));
    }
    lim.rlim_cur = needed;
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(Error::io(
            "raise the descriptor limit",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// One reading of a process from `/proc`.
struct Sample {
    /// User and system CPU time, in clock ticks.
    ticks: u64,
    rss_kb: u64,
    threads: u64,
    fds: u64,
}

/// `pid`'s figures now (Linux; `None` elsewhere or when it is gone).
fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command in parentheses: state, then fields 4..; utime and
    // stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let ticks = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    Some(Sample {
        ticks,
        rss_kb: field("VmRSS:"),
        threads: field("Threads:"),
        fds,
    })
}

/// The largest readings seen.
#[derive(Default)]
struct Peak {
    rss_kb: u64,
    threads: u64,
    fds: u64,
}

impl Peak {
    fn take(&mut self, s: &Sample) {
        self.rss_kb = self.rss_kb.max(s.rss_kb);
        self.threads = self.threads.max(s.threads);
        self.fds = self.fds.max(s.fds);
    }

    fn from(s: &Sample) -> Peak {
        let mut p = Peak::default();
        p.take(s);
        p
    }
}

/// What a process cost during a run's changes.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ProcessFigures {
    /// CPU time (user and system) over the window, as a share of one core:
    /// 0.25 is a quarter of a core.
    pub cpu: f64,
    /// Largest resident memory seen, in bytes (read once a second).
    pub rss_bytes: u64,
    /// Most threads seen.
    pub threads: u64,
    /// Most open descriptors seen.
    pub fds: u64,
}

impl ProcessFigures {
    fn between(before: &Sample, after: &Sample, wall: Duration, peak: &Peak) -> ProcessFigures {
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = after.ticks.saturating_sub(before.ticks) as f64 / hz;
        ProcessFigures {
            cpu: cpu / wall.as_secs_f64().max(1e-9),
            rss_bytes: peak.rss_kb * 1024,
            threads: peak.threads,
            fds: peak.fds,
        }
    }
}

/// The outcome of a scale run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScaleReport {
    /// Servers that renewed.
    pub servers: usize,
    /// Services they were spread over.
    pub services: usize,
    /// Watchers.
    pub watchers: usize,
    /// Changes asked for a second.
    pub rate: u32,
    /// How the servers renewed.
    pub beats: Beats,
    /// Their renewal period.
    pub period: Duration,
    /// Their TTL.
    pub ttl: Duration,
    /// How long registering the servers took, before the run.
    pub registered: Duration,
    /// How long changes were made.
    pub elapsed: Duration,
    /// Changes made (each acknowledged).
    pub changes: u64,
    /// Changes the watchers should have seen: each change once per watcher
    /// of its service.
    pub expected: u64,
    /// Changes the watchers saw.
    pub seen: u64,
    /// Renewals acknowledged.
    pub renewals: u64,
    /// How long the servers renewed (from registering to the end).
    pub renewing: Duration,
    /// With [`Beats::Udp`], the datagrams the kernel dropped for want of
    /// room at the registry's socket and at the generator's (Linux).
    pub udp_drops: Option<(u64, u64)>,
    /// 99th percentile of a renewal's latency from when it was due (HTTP
    /// beats only; zero with UDP).
    pub beat_p99: Duration,
    /// Median time from a change's answer to a watcher seeing it (zero
    /// when the watcher saw it before the answer came).
    pub p50: Duration,
    /// 99th percentile of the same.
    pub p99: Duration,
    /// Largest of the same.
    pub max: Duration,
    /// Median time from a change's request to a watcher seeing it.
    pub request_p50: Duration,
    /// 99th percentile of the same.
    pub request_p99: Duration,
    /// The registry process's cost while changes were made, when its
    /// process was given.
    pub registry: Option<ProcessFigures>,
    /// The registry's process id, when given.
    pub registry_pid: Option<u32>,
    /// The generator's own cost over the same window.
    pub generator: Option<ProcessFigures>,
    /// Errors by kind: failed or refused renewals, watch answers other
    /// than 200, changes not seen or seen without being made, failed
    /// changes.
    pub errors: BTreeMap<String, u64>,
}

impl fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let beats = match self.beats {
            Beats::Udp => "udp",
            Beats::Http => "http",
        };
        writeln!(
            f,
            "deployment   {} servers in {} services renewing by {beats} every {} (TTL {}), {} watchers, {} changes/s",
            self.servers,
            self.services,
            format_duration(self.period),
            format_duration(self.ttl),
            self.watchers,
            self.rate
        )?;
        writeln!(
            f,
            "changes      {} in {:.2}s, seen {} of {} times (registering took {:.2}s)",
            self.changes,
            self.elapsed.as_secs_f64(),
            self.seen,
            self.expected,
            self.registered.as_secs_f64()
        )?;
        writeln!(
            f,
            "propagation  p50 {:.2}ms  p99 {:.2}ms  max {:.2}ms  (from the change's request: p50 {:.2}ms  p99 {:.2}ms)",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            ms(self.request_p50),
            ms(self.request_p99)
        )?;
        write!(
            f,
            "renewals     {} ({:.0}/s)",
            self.renewals,
            self.renewals as f64 / self.renewing.as_secs_f64().max(1e-9)
        )?;
        if self.beats == Beats::Http {
            write!(f, ", p99 {:.2}ms from when due", ms(self.beat_p99))?;
        }
        if let Some((registry, generator)) = self.udp_drops {
            write!(
                f,
                ", datagrams dropped by the registry's socket {registry}, by the generator's {generator}"
            )?;
        }
        writeln!(f)?;
        let figures = |p: &ProcessFigures| {
            format!(
                "CPU {:.1}% of a core, RSS {:.1} MB, {} threads, {} descriptors",
                p.cpu * 100.0,
                p.rss_bytes as f64 / 1e6,
                p.threads,
                p.fds
            )
        };
        match (&self.registry, self.registry_pid) {
            (Some(p), Some(pid)) => writeln!(f, "registry     pid {pid}: {}", figures(p))?,
            _ => writeln!(f, "registry     not measured (no process of it found)")?,
        }
        if let Some(p) = &self.generator {
            writeln!(f, "generator    {}", figures(p))?;
        }
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

/// The process listening on TCP `port` of this machine, found through
/// `/proc/net/tcp{,6}` and the descriptors of the processes this user may
/// read (Linux; `None` elsewhere or when not found).
pub fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                inodes.extend(f.get(9).map(|i| format!("socket:[{i}]")));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_deployment_sees_every_change_and_renews_every_server() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let server = crate::RegistryServer::start_local().unwrap();
        for beats in [Beats::Udp, Beats::Http] {
            let report = ScaleOptions::new(server.url())
                .servers(20)
                .services(2)
                .watchers(6)
                .changes_per_second(10)
                .period(Duration::from_millis(500))
                .ttl(Duration::from_secs(3))
                .beats(beats)
                .beat_connections(2)
                .duration(Duration::from_millis(1500))
                .registry_pid(Some(std::process::id()))
                .run()
                .unwrap();
            assert!(report.changes > 0, "{report}");
            assert_eq!(report.seen, report.expected, "{report}");
            assert_eq!(report.expected, report.changes * 3, "{report}");
            assert!(report.errors.is_empty(), "{report}");
            assert!(report.renewals >= 20, "{report}");
            let registry = report.registry.expect("this process is measured");
            assert!(registry.threads > 0 && registry.fds > 0, "{report}");
            for s in 0..2 {
                assert!(
                    server.registry().alive(&service_name(s)).is_empty(),
                    "the run removes its servers"
                );
            }
        }
    }

    #[test]
    fn the_process_listening_on_a_port_is_found() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
        drop(l);
        assert_eq!(listening_pid(port), None);
    }

    #[test]
    fn an_answer_is_whole_only_with_its_body_and_carries_its_index() {
        let ok = b"HTTP/1.1 200 OK\r\nX-Myrpc-Index: 42\r\nContent-Length: 2\r\n\r\n{}";
        match parse(ok) {
            Some(Reading::Answer(a)) => assert_eq!((a.status, a.index), (200, Some(42))),
            _ => panic!("a whole answer"),
        }
        assert!(parse(&ok[..ok.len() - 1]).is_none());
        assert!(matches!(
            parse(b"HTTP/1.1 2xx\r\n\r\n"),
            Some(Reading::Failed("bad answer"))
        ));
    }
}
