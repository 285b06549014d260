//! `Heartbeat`: keeps one server registered until it is stopped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::client::{self, CallOptions, DEFAULT_CALL_TIMEOUT, Verb};
use crate::error::{Error, Result};
use crate::protocol::{
    HEADER_META, HEADER_SERVER, HEADER_STATUS, HEADER_TTL, HEADER_UDP, HEADER_WEIGHT, Status,
    encode_meta, format_duration, parse_duration, service_url, validate_addr,
};
use crate::rand::jitter;
use crate::registry::{DEFAULT_TTL, MAX_WEIGHT};
use crate::server::udp::{self as wire, Code};

/// First wait after a failed beat; doubled on each failure up to the period.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Shortest period a heartbeat beats at, whatever the registry's TTL.
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// Period used when entries never expire (TTL 0): beating still re-registers
/// the server after a registry restart.
const PERMANENT_PERIOD: Duration = Duration::from_secs(30);
/// Shortest wait for a UDP reply before the datagram counts as lost.
const MIN_UDP_WAIT: Duration = Duration::from_millis(50);
/// Most HTTP beats made before UDP is tried again after it went silent:
/// the holdoff doubles from 2 up to this while it stays silent.
const MAX_UDP_HOLDOFF: u32 = 64;

/// Builds a [`Heartbeat`]: [`Heartbeat::builder`], the setters, then
/// [`start`](HeartbeatBuilder::start).
///
/// ```
/// use regcenter::Heartbeat;
/// use std::time::Duration;
///
/// let builder = Heartbeat::builder("http://127.0.0.1:9999/myRPC/registry", "tcp@127.0.0.1:7001")
///     .service("arith")
///     .ttl(Duration::from_secs(15));
/// # let _ = builder;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct HeartbeatBuilder {
    /// The first registry, then those of [`also`](HeartbeatBuilder::also).
    registries: Vec<String>,
    addr: String,
    service: String,
    period: Option<Duration>,
    ttl: Option<Duration>,
    weight: Option<u32>,
    meta: Vec<(String, String)>,
    timeout: Duration,
    token: Option<String>,
    status: Option<Status>,
    #[cfg(feature = "tls")]
    ca_file: Option<std::path::PathBuf>,
}

impl HeartbeatBuilder {
    /// Trusts only the certificate authorities in this PEM file for
    /// `https://` registries (a private CA), instead of the public roots.
    /// Read at [`start`](HeartbeatBuilder::start). Defaults to the public
    /// roots.
    #[cfg(feature = "tls")]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The service to register in. Defaults to the default service (the
    /// registry's base path).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Time between beats. Defaults to a third of the TTL the registry
    /// reports, so two beats may be lost before the entry expires.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }

    /// The TTL to ask for (sent as `X-Myrpc-Ttl`; the registry clamps it).
    /// Defaults to the registry's default TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The weight for weighted selection, 1 to 10 000 (sent as
    /// `X-Myrpc-Weight`). Defaults to not sending one (weight 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Adds a metadata label (sent URL-encoded in `X-Myrpc-Meta`). Defaults
    /// to none.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.push((key.into(), value.into()));
        self
    }

    /// Another registry, as on
    /// [`RegistryDiscoveryBuilder::also`](crate::RegistryDiscoveryBuilder::also):
    /// a heartbeat keeps the server registered at every one, beaten at the
    /// same time as the first and independently (one thread each), so that
    /// a discovery, which reads from one registry at a time and moves on
    /// only when it cannot be reached, finds the server whichever answers.
    /// Defaults to none.
    pub fn also(mut self, registry_url: &str) -> Self {
        self.registries.push(registry_url.to_string());
        self
    }

    /// The registry's bearer token (sent as `Authorization: Bearer …`).
    /// Defaults to none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Bound of each phase of each call to the registry. Defaults to 2 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The status to register with (sent as `X-Myrpc-Status` from the
    /// first beat on), as if [`Heartbeat::drain`] or
    /// [`undrain`](Heartbeat::undrain) had been called before it: with
    /// [`Status::Draining`], a server that warms up registers without
    /// taking work, and calls `undrain` when it is ready. Defaults to
    /// sending no status, which leaves the one in force at the registry
    /// (`up` for a new entry) as it is.
    ///
    /// ```
    /// use regcenter::{Discovery, Heartbeat, RegistryDiscovery, RegistryServer, Status};
    ///
    /// let server = RegistryServer::start_local()?;
    /// let hb = Heartbeat::builder(server.url(), "tcp@127.0.0.1:7001")
    ///     .status(Status::Draining)
    ///     .start()?;
    /// let d = RegistryDiscovery::new(server.url())?;
    /// assert_eq!(d.instances()?[0].status(), Status::Draining);
    /// assert!(d.get_all()?.is_empty()); // registered, but picked by no one
    /// hb.undrain()?; // warmed up
    /// d.refresh()?;
    /// assert_eq!(d.get_all()?, ["tcp@127.0.0.1:7001"]);
    /// hb.stop()?;
    /// server.shutdown()?;
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn status(mut self, status: Status) -> Self {
        self.status = Some(status);
        self
    }

    /// Registers the server and keeps it registered: beats once at every
    /// registry, then from a thread per registry.
    ///
    /// When a registry cannot be reached, `start` still returns a running
    /// heartbeat, which registers the server there as soon as it answers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddr`], [`Error::InvalidService`] or
    /// [`Error::InvalidConfig`] for bad input; [`Error::Status`] when the
    /// first beat is refused for good (400, 401, 403, or 404 with a reason;
    /// see [What ends a heartbeat](Heartbeat#what-ends-a-heartbeat)); any
    /// other failure of the first beat is retried in the background.
    /// [`Error::Io`] when a thread cannot be spawned.
    pub fn start(self) -> Result<Heartbeat> {
        Heartbeat::launch(self)
    }
}

/// Keeps a server registered: beats once before
/// [`start`](HeartbeatBuilder::start) returns, then from a thread every period, retrying failures with capped,
/// jittered exponential backoff, never giving up on a registry that is down.
///
/// [`stop`](Heartbeat::stop), or dropping the handle, wakes the thread at
/// once (interrupting a beat in flight), joins it and deregisters the server
/// with a DELETE. A registry that answers the DELETE with 405 (the Go
/// original has no DELETE) or 404 counts as deregistered: the entry expires
/// there on its own.
///
/// # What ends a heartbeat
///
/// Only an explicit refusal is permanent: a beat answered 400 (a bad
/// address or option), 401 or 403 (a refused token), or 404 with a reason
/// (no registry at that path). The thread of that registry then ends and
/// logs the error; [`is_running`](Heartbeat::is_running) turns false,
/// [`stopped_reason`](Heartbeat::stopped_reason) says why and `stop` returns
/// the error. Everything else is retried, for as long as the heartbeat
/// runs: a registry that cannot be reached, stalls or times out, an answer
/// that is not HTTP, is cut short, has an oversized head or a malformed
/// header, a redirect (never followed: a registry does not redirect), 5xx,
/// 429 and any other status. Such a registry costs each beat at most the
/// [`timeout`](HeartbeatBuilder::timeout) of each phase of a call.
///
/// With [`also`](HeartbeatBuilder::also), each registry is beaten by its own
/// thread: a refusal at one ends that one only, and `stop` still
/// deregisters from the others.
///
/// # Draining
///
/// [`drain`](Heartbeat::drain) keeps the server registered and renewed but
/// asks the registries to stop handing it out, so that it can finish the
/// work it has and then [`stop`](Heartbeat::stop) without a client picking
/// it in between; [`undrain`](Heartbeat::undrain) takes it back. Once either
/// is called (or [`HeartbeatBuilder::status`] set), every beat carries the
/// status, so a registry that restarted, or was unreachable at the time,
/// learns it from the next beat. A heartbeat whose status was never set
/// sends none, which leaves a status set by someone else (`regcenter
/// drain`) in force; one that sends its own overrides it at its next beat.
///
/// # UDP renewals
///
/// When a registry's POST answer advertises UDP renewals
/// (`X-Myrpc-Udp: PORT`, the README's "UDP renewals"), the beats after it
/// go there by datagram, tagged with the token when one is set, and the
/// kept-alive HTTP connection is closed: the server then holds no
/// connection of the registry. An entry the registry no longer knows is
/// registered again over HTTP at once, with its weight, metadata, TTL and
/// status; a refused datagram, or two replies that do not come (each
/// waited for half a period, at least 50 ms, at most the
/// [`timeout`](HeartbeatBuilder::timeout)), make that beat go over HTTP,
/// and UDP is tried again a few HTTP beats later. A drain, an undrain and
/// the deregistration at stop always go over HTTP. Registries that do not
/// advertise it, such as the Go seed, are beaten over HTTP only.
///
/// # State
///
/// [`state`](Heartbeat::state) says whether the server is registered now,
/// which [`is_running`](Heartbeat::is_running) does not: a heartbeat runs
/// on through an outage of its registry, retrying.
#[must_use = "dropping the Heartbeat stops it and deregisters the server"]
pub struct Heartbeat {
    shared: Arc<Shared>,
    /// One per registry, each with its own thread.
    beats: Vec<Arc<Beat>>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    /// Held only to read or update the bookkeeping, never across a call.
    state: Mutex<State>,
    /// Wakes the beat threads when `stop` is set.
    wake: Condvar,
    /// Notified when a beat thread ends on its own.
    ended: Condvar,
}

struct State {
    stop: bool,
    beats: u64,
    /// Why beat threads ended on their own, with the index of their
    /// registry in `Heartbeat::beats`, in the order they ended.
    failures: Vec<(usize, Error)>,
    /// The status every beat carries; `None` until the program sets one.
    status: Option<Status>,
    /// Whether each registry acknowledged its last beat (false once its
    /// thread ended).
    acked: Vec<bool>,
    /// What [`Heartbeat::state`] reports while a registry is beaten; `None`
    /// until the outcome of a first beat is recorded.
    phase: Option<Phase>,
}

/// The state of a heartbeat that still beats some registry.
enum Phase {
    /// Since the first acknowledgement after a time none was.
    Registered(Instant),
    /// Since the first failure of the outage, and the last failure.
    Retrying(Instant, String),
}

impl State {
    /// Records the outcome of a beat at the registry `index`.
    fn record(&mut self, index: usize, outcome: std::result::Result<(), &Error>) {
        self.acked[index] = outcome.is_ok();
        if outcome.is_ok() {
            self.beats += 1;
        }
        let now = Instant::now();
        let any = self.acked.contains(&true);
        self.phase = match (self.phase.take(), any, outcome) {
            (Some(Phase::Registered(since)), true, _) => Some(Phase::Registered(since)),
            (_, true, _) => Some(Phase::Registered(now)),
            (Some(Phase::Retrying(since, _)), false, Err(e)) => {
                Some(Phase::Retrying(since, e.to_string()))
            }
            (_, false, Err(e)) => Some(Phase::Retrying(now, e.to_string())),
            // Unreachable: an acknowledgement makes `any` true. Kept total
            // so that no outcome can panic under the lock.
            (phase, false, Ok(())) => phase,
        };
    }

    /// Records that the thread of the registry `index` ended on its own.
    fn end(&mut self, index: usize, error: Error) {
        self.record(index, Err(&error));
        self.failures.push((index, error));
    }

    /// The registries whose threads still beat.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.acked.len()).filter(|i| self.failures.iter().all(|(f, _)| f != i))
    }
}

/// Whether a heartbeat's server is registered now: [`Heartbeat::state`].
///
/// With several registries ([`also`](HeartbeatBuilder::also)) the heartbeat
/// counts as registered while any registry still beaten acknowledged its
/// last beat, since a discovery given the same registries finds the server
/// at that one: `Registered` since the first acknowledgement after a time
/// when none was (or since the first beat), `Retrying` from the failure
/// that left none acknowledging. A registry that refused the server for
/// good no longer counts; `Stopped` once every registry has.
///
/// ```
/// use regcenter::{Heartbeat, HeartbeatState, RegistryServer};
///
/// let server = RegistryServer::start_local()?;
/// let hb = Heartbeat::builder(server.url(), "tcp@127.0.0.1:7001").start()?;
/// match hb.state() {
///     HeartbeatState::Registered { since } => assert!(since.elapsed().as_secs() < 60),
///     other => panic!("the first beat landed before start returned: {other:?}"),
/// }
/// hb.stop()?;
/// server.shutdown()?;
/// # Ok::<(), regcenter::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeartbeatState {
    /// The last beat was acknowledged (at one registry at least).
    Registered {
        /// The first acknowledged beat of the current good run: renewals
        /// do not move it, an outage ends the run.
        since: Instant,
    },
    /// The last beat failed (at every registry) and is being retried; the
    /// entry expires at its TTL if the outage lasts.
    Retrying {
        /// The first failed beat of the current outage (or the first beat,
        /// when none has been acknowledged yet).
        since: Instant,
        /// The message of the last failure, naming the registry, e.g.
        /// `registry http://127.0.0.1:9999/myRPC/registry: unreachable`.
        last_error: String,
    },
    /// Every registry refused the server for good; nothing is sent any
    /// more (see [What ends a heartbeat](Heartbeat#what-ends-a-heartbeat)).
    Stopped {
        /// As [`Heartbeat::stopped_reason`]: the first refusal.
        reason: String,
    },
}

/// What one beat sends, prepared once.
struct Beat {
    /// This registry's place in `Heartbeat::beats` and `State::acked`.
    index: usize,
    /// Held across each POST: see [`Beat::beat`].
    turn: Mutex<()>,
    /// Replaced by a new one when beats go by UDP, which closes the
    /// kept-alive connection of the old one: a server renewing by
    /// datagram holds no connection, and no thread, of the registry.
    agent: Mutex<ureq::Agent>,
    url: String,
    addr: String,
    headers: Vec<(&'static str, String)>,
    period: Option<Duration>,
    timeout: Duration,
    trust: client::Trust,
    /// The service, as UDP renewals name it.
    service: String,
    /// Tags UDP renewals when set.
    token: Option<String>,
    /// Renewals by datagram, once a POST answer advertised them. Taken
    /// under `turn` only.
    udp: Mutex<UdpPath>,
}

/// The UDP side of one registry (see [`Beat::renew_udp`]).
#[derive(Default)]
struct UdpPath {
    /// Connected to the registry's UDP port while renewals go by UDP.
    socket: Option<UdpSocket>,
    /// The port the socket is connected to.
    port: u16,
    /// The registry's IP, resolved from its URL once.
    ip: Option<IpAddr>,
    /// The stamp of the last datagram: each is above the last.
    stamp: u64,
    /// The period of the last HTTP beat, kept by UDP ones.
    period: Duration,
    /// HTTP beats still to make before UDP is tried again.
    holdoff: u32,
    /// The holdoff the next silence sets.
    next_holdoff: u32,
    buf: Vec<u8>,
}

/// How a UDP renewal went.
enum UdpOutcome {
    /// Renewed: the period to the next beat.
    Renewed(Duration),
    /// Beat over HTTP now.
    Http,
}

impl Beat {
    /// One POST with the status in force, its outcome recorded; on success
    /// the period to wait until the next.
    fn beat(&self, shared: &Shared) -> Result<Duration> {
        self.beat_by(shared, false)
    }

    /// [`beat`](Beat::beat), by datagram when `udp` is set and the
    /// registry takes them; a status change always goes by HTTP.
    fn beat_by(&self, shared: &Shared, udp: bool) -> Result<Duration> {
        // One POST at a time per registry, the status read once the turn is
        // ours: else a beat that read `up` could land just after a drain and
        // undo it at that registry for a period.
        let _turn = self.turn.lock();
        let status = shared.state.lock().status;
        let result = match udp.then(|| self.renew_udp()) {
            Some(UdpOutcome::Renewed(period)) => Ok(period),
            Some(UdpOutcome::Http) | None => self.send(status),
        };
        shared
            .state
            .lock()
            .record(self.index, result.as_ref().map(drop));
        result
    }

    fn send(&self, status: Option<Status>) -> Result<Duration> {
        let headers: Vec<(&str, &str)> = std::iter::once((HEADER_SERVER, self.addr.as_str()))
            .chain(self.headers.iter().map(|(n, v)| (*n, v.as_str())))
            .chain(status.map(|s| (HEADER_STATUS, s.as_str())))
            .collect();
        let agent = self.agent.lock().clone();
        let reply = client::call(&agent, Verb::Post, &self.url, &headers)?.ok(&self.url)?;
        let period = match self.period {
            Some(p) => p,
            None => {
                // The Go original does not answer X-Myrpc-Ttl: assume its
                // default.
                let ttl = reply
                    .header(HEADER_TTL)
                    .and_then(|t| parse_duration(t).ok())
                    .unwrap_or(DEFAULT_TTL);
                if ttl.is_zero() {
                    PERMANENT_PERIOD
                } else {
                    (ttl / 3).max(MIN_PERIOD)
                }
            }
        };
        let port = reply
            .header(HEADER_UDP)
            .and_then(|p| p.trim().parse::<u16>().ok())
            .filter(|p| *p != 0);
        self.advertised(port, period);
        Ok(period)
    }

    /// Takes a POST answer's `X-Myrpc-Udp` (`None`: not advertised): the
    /// next beats go by UDP, unless it went silent lately.
    fn advertised(&self, port: Option<u16>, period: Duration) {
        let mut u = self.udp.lock();
        u.period = period;
        let Some(port) = port else {
            u.socket = None;
            return;
        };
        if u.holdoff > 0 {
            u.holdoff -= 1;
            return;
        }
        if u.socket.is_some() && u.port == port {
            return;
        }
        if u.ip.is_none() {
            u.ip = registry_ip(&self.url);
        }
        let Some(ip) = u.ip else {
            return;
        };
        let wait = self.timeout.min(period / 2).max(MIN_UDP_WAIT);
        match udp_socket(SocketAddr::new(ip, port), wait) {
            Ok(socket) => {
                log::debug!(
                    "heartbeat for {}: renewing at {} by UDP port {port}",
                    self.addr,
                    self.url
                );
                u.socket = Some(socket);
                u.port = port;
                // The connection the POST came on goes with the old agent
                // (once the caller's copy is dropped).
                *self.agent.lock() = client::agent_trusting(self.timeout, &self.trust);
            }
            Err(e) => log::debug!(
                "heartbeat for {}: no UDP socket for {ip}:{port} ({e}); renewing over HTTP",
                self.addr
            ),
        }
    }

    /// One renewal by datagram, sent again once when its reply does not
    /// come: `Http` when renewals do not go by UDP, when the entry is
    /// unknown (registered again over HTTP, with everything it carries),
    /// when the registry refused it, or when two replies did not come
    /// (UDP is then left alone for a few beats, more while it stays
    /// silent).
    fn renew_udp(&self) -> UdpOutcome {
        let mut guard = self.udp.lock();
        let u = &mut *guard;
        let Some(socket) = u.socket.as_ref() else {
            return UdpOutcome::Http;
        };
        let token = self.token.as_deref().map(str::as_bytes);
        for _ in 0..2 {
            u.stamp = wire::unix_ms().max(u.stamp + 1);
            wire::encode(&mut u.buf, &self.service, &self.addr, u.stamp, token);
            let reply = socket
                .send(&u.buf)
                .and_then(|_| await_reply(socket, u.stamp));
            match reply {
                Ok(Some(Code::Renewed)) => {
                    u.next_holdoff = 2;
                    return UdpOutcome::Renewed(u.period);
                }
                Ok(Some(Code::Unknown)) => {
                    log::info!(
                        "heartbeat for {}: {} no longer knows it; registering again",
                        self.addr,
                        self.url
                    );
                    return UdpOutcome::Http;
                }
                Ok(Some(Code::Refused)) => {
                    // The token or the clocks disagree: HTTP says which.
                    log::warn!(
                        "heartbeat for {}: {} refused a UDP renewal (a wrong token, or clocks \
                         more than 30s apart); renewing over HTTP",
                        self.addr,
                        self.url
                    );
                    u.socket = None;
                    u.holdoff = MAX_UDP_HOLDOFF;
                    return UdpOutcome::Http;
                }
                Ok(None) => {}
                // Nothing listens on the port (ICMP said so): a registry
                // restarting, or one without UDP now. HTTP tells.
                Err(_) => {
                    u.socket = None;
                    return UdpOutcome::Http;
                }
            }
        }
        log::debug!(
            "heartbeat for {}: no reply to two UDP renewals from {}; renewing over HTTP",
            self.addr,
            self.url
        );
        u.socket = None;
        u.holdoff = u.next_holdoff.max(2);
        u.next_holdoff = (u.holdoff * 2).min(MAX_UDP_HOLDOFF);
        UdpOutcome::Http
    }
}

impl Heartbeat {
    /// Starts building a heartbeat that registers `addr` (e.g.
    /// `tcp@127.0.0.1:7001`) with the registry at `registry_url` (e.g.
    /// `http://127.0.0.1:9999/myRPC/registry`); nothing is checked or sent
    /// until [`start`](HeartbeatBuilder::start).
    pub fn builder(registry_url: &str, addr: &str) -> HeartbeatBuilder {
        HeartbeatBuilder {
            registries: vec![registry_url.to_string()],
            addr: addr.to_string(),
            service: String::new(),
            period: None,
            ttl: None,
            weight: None,
            meta: Vec::new(),
            timeout: DEFAULT_CALL_TIMEOUT,
            token: None,
            status: None,
            #[cfg(feature = "tls")]
            ca_file: None,
        }
    }

    fn launch(options: HeartbeatBuilder) -> Result<Heartbeat> {
        let addr = options.addr.as_str();
        let registry_url = options.registries[0].as_str();
        validate_addr(addr)?;
        service_url(registry_url, &options.service)?;
        if options.period.is_some_and(|p| p < MIN_PERIOD) {
            return Err(Error::config("period", "must be at least 10ms"));
        }
        if options
            .weight
            .is_some_and(|w| !(1..=MAX_WEIGHT).contains(&w))
        {
            return Err(Error::config("weight", "must be from 1 to 10000"));
        }
        if options.timeout.is_zero() {
            return Err(Error::config("timeout", "must be above zero"));
        }
        if let Some(t) = &options.token {
            client::validate_token(t)?;
        }
        for registry in &options.registries {
            client::check_scheme("registry URL", registry)?;
        }
        #[cfg(feature = "tls")]
        let trust = client::Trust::from_ca_file(options.ca_file.as_deref())?;
        #[cfg(not(feature = "tls"))]
        let trust = client::Trust::default();
        let mut headers = Vec::new();
        headers.extend(client::bearer(options.token.as_deref()));
        if let Some(ttl) = options.ttl {
            headers.push((HEADER_TTL, format_duration(ttl)));
        }
        if let Some(w) = options.weight {
            headers.push((HEADER_WEIGHT, w.to_string()));
        }
        if !options.meta.is_empty() {
            headers.push((HEADER_META, encode_meta(&options.meta)));
        }
        let mut beats = Vec::new();
        for (index, registry) in options.registries.iter().enumerate() {
            beats.push(Arc::new(Beat {
                index,
                turn: Mutex::new(()),
                agent: Mutex::new(client::agent_trusting(options.timeout, &trust)),
                url: service_url(registry, &options.service)?,
                addr: addr.to_string(),
                headers: headers.clone(),
                period: options.period,
                timeout: options.timeout,
                trust: trust.clone(),
                service: options.service.clone(),
                token: options.token.clone(),
                udp: Mutex::new(UdpPath::default()),
            }));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stop: false,
                beats: 0,
                failures: Vec::new(),
                status: options.status,
                acked: vec![false; beats.len()],
                phase: None,
            }),
            wake: Condvar::new(),
            ended: Condvar::new(),
        });
        let mut firsts = Vec::new();
        for (i, beat) in beats.iter().enumerate() {
            match beat.beat(&shared) {
                Ok(period) => firsts.push(Ok(period)),
                Err(e) if e.is_transient() => {
                    log::warn!(
                        "heartbeat for {addr} at {}: {e}; retrying in the background",
                        beat.url
                    );
                    firsts.push(Err(e));
                }
                Err(e) => {
                    // Undo the registrations already made; they would
                    // otherwise linger until their TTL.
                    for b in &beats[..i] {
                        let _ = b.deregister();
                    }
                    return Err(e);
                }
            }
        }
        let mut hb = Heartbeat {
            shared,
            beats,
            threads: Vec::new(),
        };
        for (i, (beat, first)) in hb.beats.clone().into_iter().zip(firsts).enumerate() {
            let s = hb.shared.clone();
            let thread = thread::Builder::new()
                .name("regcenter-heartbeat".into())
                .spawn(move || {
                    let _ended = Ended {
                        shared: &s,
                        index: i,
                        beat: &beat,
                    };
                    beat_loop(&s, i, &beat, first);
                })
                .map_err(|e| Error::io("spawn heartbeat thread", e))?;
            hb.threads.push(thread);
        }
        Ok(hb)
    }

    /// How many beats the registry has accepted so far.
    pub fn beats(&self) -> u64 {
        self.shared.state.lock().beats
    }

    /// Whether the server is registered now, and since when; see
    /// [`HeartbeatState`] for what counts with several registries.
    ///
    /// ```
    /// use regcenter::{Heartbeat, HeartbeatState, RegistryServer};
    ///
    /// let server = RegistryServer::start_local()?;
    /// let heartbeat = Heartbeat::builder(server.url(), "tcp@127.0.0.1:7001").start()?;
    /// // The first beat was acknowledged before start returned.
    /// assert!(matches!(heartbeat.state(), HeartbeatState::Registered { .. }));
    /// # heartbeat.stop()?;
    /// # server.shutdown()?;
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn state(&self) -> HeartbeatState {
        let st = self.shared.state.lock();
        if st.live().next().is_none() {
            return HeartbeatState::Stopped {
                reason: reason(&st).unwrap_or_default(),
            };
        }
        match &st.phase {
            Some(Phase::Registered(since)) => HeartbeatState::Registered { since: *since },
            Some(Phase::Retrying(since, e)) => HeartbeatState::Retrying {
                since: *since,
                last_error: e.clone(),
            },
            // Not reached: `start` records every first beat before it
            // returns the handle.
            None => HeartbeatState::Retrying {
                since: Instant::now(),
                last_error: String::new(),
            },
        }
    }

    /// The status the beats carry: `None` until
    /// [`drain`](Heartbeat::drain), [`undrain`](Heartbeat::undrain) or
    /// [`HeartbeatBuilder::status`] set one.
    pub fn status(&self) -> Option<Status> {
        self.shared.state.lock().status
    }

    /// Asks every registry to stop handing the server out while it stays
    /// registered (see [Draining](Heartbeat#draining)): a POST to each at
    /// once, with the beats' token, TTL, weight and metadata, and
    /// `X-Myrpc-Status: draining`; every later beat carries it too.
    ///
    /// Returns when every registry still beaten has answered, or its call
    /// failed: within the [`timeout`](HeartbeatBuilder::timeout) bound of
    /// a call, twice over at a registry where a beat was in flight. Clients
    /// see the change when they next read the registry: a watching
    /// discovery within milliseconds, a polling one at its next refresh.
    ///
    /// A registry that predates statuses (the Go seed) acknowledges the
    /// POST and keeps listing the server.
    ///
    /// ```
    /// use regcenter::{Heartbeat, RegistryServer, Status};
    ///
    /// let server = RegistryServer::start_local()?;
    /// let heartbeat = Heartbeat::builder(server.url(), "tcp@127.0.0.1:7001").start()?;
    /// heartbeat.drain()?;
    /// assert_eq!(heartbeat.status(), Some(Status::Draining));
    /// // ... wait until clients have seen it, finish the calls in flight ...
    /// heartbeat.stop()?;
    /// # server.shutdown()?;
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// When no registry acknowledged: the error of the first registry's
    /// POST ([`Error::Unreachable`], [`Error::Status`], …), or
    /// [`Error::Stopped`] when every registry had refused the server for
    /// good. The status is in force all the same: the beats carry it to
    /// each registry as soon as it answers.
    pub fn drain(&self) -> Result<()> {
        self.tell(Status::Draining)
    }

    /// Takes a drain back: as [`drain`](Heartbeat::drain), with
    /// `X-Myrpc-Status: up`, and every later beat carries `up`.
    ///
    /// ```
    /// use regcenter::{Heartbeat, RegistryServer, Status};
    ///
    /// let server = RegistryServer::start_local()?;
    /// // Registered drained while it warms up, then ready for work.
    /// let heartbeat = Heartbeat::builder(server.url(), "tcp@127.0.0.1:7001")
    ///     .status(Status::Draining)
    ///     .start()?;
    /// heartbeat.undrain()?;
    /// assert_eq!(heartbeat.status(), Some(Status::Up));
    /// # heartbeat.stop()?;
    /// # server.shutdown()?;
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`drain`](Heartbeat::drain).
    pub fn undrain(&self) -> Result<()> {
        self.tell(Status::Up)
    }

    /// Sets the status the beats carry and beats every registry still
    /// beaten at once with it.
    fn tell(&self, status: Status) -> Result<()> {
        let live: Vec<&Beat> = {
            let mut st = self.shared.state.lock();
            st.status = Some(status);
            st.live().map(|i| &*self.beats[i]).collect()
        };
        let shared = &*self.shared;
        let results: Vec<Result<Duration>> = match live.as_slice() {
            [] => {
                return Err(Error::Stopped {
                    what: format!(
                        "heartbeat for {} (every registry refused it: {})",
                        self.beats[0].addr,
                        self.stopped_reason().unwrap_or_default()
                    ),
                });
            }
            [one] => vec![one.beat(shared)],
            many => thread::scope(|scope| {
                let calls: Vec<_> = many
                    .iter()
                    .map(|b| {
                        let spawned = thread::Builder::new()
                            .name("regcenter-drain".into())
                            .spawn_scoped(scope, || b.beat(shared));
                        // Without a thread, this registry is told in turn.
                        spawned.map_err(|_| b.beat(shared))
                    })
                    .collect();
                calls
                    .into_iter()
                    .zip(many)
                    .map(|(call, b)| match call {
                        Ok(handle) => handle.join().unwrap_or_else(|_| {
                            Err(Error::Stopped {
                                what: format!(
                                    "telling {} at {} {status} (its thread panicked)",
                                    b.addr, b.url
                                ),
                            })
                        }),
                        Err(done) => done,
                    })
                    .collect()
            }),
        };
        if results.iter().any(Result::is_ok) {
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                log::warn!(
                    "heartbeat for {}: telling a registry {status}: {e}",
                    self.beats[0].addr
                );
            }
            return Ok(());
        }
        let mut errors = results.into_iter().filter_map(Result::err);
        Err(errors
            .next()
            .expect("no result was Ok, and there was one at least"))
    }

    /// Whether every registry is still beaten: false once one refused the
    /// server for good (see [What ends a heartbeat](Heartbeat#what-ends-a-heartbeat)),
    /// and then [`stopped_reason`](Heartbeat::stopped_reason) says why. It
    /// stays true through an outage of a registry, which is retried;
    /// [`state`](Heartbeat::state) says whether the server is registered.
    pub fn is_running(&self) -> bool {
        self.shared.state.lock().failures.is_empty()
    }

    /// Why the heartbeat stopped beating on its own, `None` while it runs:
    /// the message of the first permanent error (it names the registry and
    /// its reason, e.g. `registry http://127.0.0.1:9999/myRPC/registry:
    /// answered 401: missing or wrong bearer token`), or of a panic of a
    /// beat thread. A registry that is down or answers garbage does not stop
    /// it: it is retried for as long as the heartbeat runs.
    ///
    /// A program that runs only to keep a server registered should then
    /// call [`stop`](Heartbeat::stop), which deregisters from the
    /// registries that did not refuse and returns the same error, and exit
    /// non-zero with it.
    pub fn stopped_reason(&self) -> Option<String> {
        reason(&self.shared.state.lock())
    }

    /// Waits up to `timeout` for the heartbeat to stop on its own; the
    /// reason as [`stopped_reason`](Heartbeat::stopped_reason), `None` when
    /// it still runs at the deadline. Lets a program wait for either this or
    /// its own shutdown signal without polling tightly.
    pub fn wait_stopped(&self, timeout: Duration) -> Option<String> {
        let running = |st: &mut State| st.failures.is_empty();
        let mut st = self.shared.state.lock();
        match Instant::now().checked_add(timeout) {
            Some(deadline) => {
                self.shared
                    .ended
                    .wait_while_until(&mut st, running, deadline);
            }
            None => self.shared.ended.wait_while(&mut st, running),
        }
        reason(&st)
    }

    /// The URL the server is registered at (the first registry's).
    pub fn url(&self) -> &str {
        &self.beats[0].url
    }

    /// Stops beating, joins the threads and deregisters the server from
    /// every registry, except those that had refused it for good.
    ///
    /// # Errors
    ///
    /// The permanent error that ended the heartbeat early (the other
    /// registries are deregistered all the same, and their failures only
    /// logged), else the error of a DELETE when a registry could not be
    /// reached or answered with an error (the entry then expires after its
    /// TTL).
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if self.threads.is_empty() {
            return Ok(());
        }
        {
            let mut st = self.shared.state.lock();
            st.stop = true;
            self.shared.wake.notify_all();
        }
        // Interrupts a beat blocked on a registry that stalls; the agents
        // are not used again (the DELETE has its own).
        for b in &self.beats {
            b.agent.lock().clone().shutdown();
        }
        let mut panicked = false;
        for t in self.threads.drain(..) {
            panicked |= t.join().is_err();
        }
        let mut failures = std::mem::take(&mut self.shared.state.lock().failures);
        // Every registry that did not refuse is told, even when one fails.
        let results: Vec<Result<()>> = self
            .beats
            .iter()
            .enumerate()
            .filter(|(i, _)| failures.iter().all(|(f, _)| f != i))
            .map(|(_, b)| b.deregister())
            .collect();
        if !failures.is_empty() {
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                log::warn!("heartbeat for {}: {e}", self.beats[0].addr);
            }
            return Err(failures.swap_remove(0).1);
        }
        if panicked {
            // Not reached while `Ended` records panics; kept so that a panic
            // can never pass for a clean stop.
            return Err(Error::Stopped {
                what: format!("heartbeat for {} (its thread panicked)", self.beats[0].addr),
            });
        }
        results.into_iter().collect()
    }
}

/// The message of the first failure, if any.
fn reason(st: &State) -> Option<String> {
    st.failures.first().map(|(_, e)| e.to_string())
}

/// Held by a beat thread: records a panic as the thread's failure, and
/// wakes [`Heartbeat::wait_stopped`] when the thread ends on its own.
struct Ended<'a> {
    shared: &'a Shared,
    index: usize,
    beat: &'a Beat,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        // The state lock is never held across code that can panic, so this
        // cannot deadlock on a lock the panicking thread holds.
        let mut st = self.shared.state.lock();
        if thread::panicking() {
            st.end(
                self.index,
                Error::Stopped {
                    what: format!(
                        "heartbeat for {} at {} (its thread panicked)",
                        self.beat.addr, self.beat.url
                    ),
                },
            );
        }
        self.shared.ended.notify_all();
    }
}

impl Beat {
    fn deregister(&self) -> Result<()> {
        // A fresh short-lived agent: the DELETE must not wait behind a
        // pooled connection to a registry that restarted meanwhile.
        let agent = client::agent_trusting(self.timeout.min(Duration::from_secs(1)), &self.trust);
        let headers: Vec<(&str, &str)> = std::iter::once((HEADER_SERVER, self.addr.as_str()))
            .chain(
                self.headers
                    .iter()
                    .filter(|(n, _)| *n == "Authorization")
                    .map(|(n, v)| (*n, v.as_str())),
            )
            .collect();
        let reply = client::call(&agent, Verb::Delete, &self.url, &headers)?;
        match reply.status {
            404 | 405 => Ok(()),
            _ => reply.ok(&self.url).map(drop),
        }
    }
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field(
                "urls",
                &self.beats.iter().map(|b| &b.url).collect::<Vec<_>>(),
            )
            .field("addr", &self.beats[0].addr)
            .field("beats", &self.beats())
            .finish()
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            log::warn!("heartbeat for {}: {e}", self.beats[0].addr);
        }
    }
}

fn beat_loop(shared: &Shared, index: usize, beat: &Beat, first: Result<Duration>) {
    let fallback = beat.period.unwrap_or(DEFAULT_TTL / 3);
    let mut backoff = FIRST_BACKOFF;
    let mut failing = first.is_err();
    let mut next = Instant::now()
        + match first {
            Ok(period) => period,
            Err(_) => jitter(backoff, 0.5),
        };
    let mut period = fallback;
    loop {
        {
            let mut st = shared.state.lock();
            // Interruptible: stop() sets the flag under this lock and notifies.
            shared.wake.wait_while_until(&mut st, |st| !st.stop, next);
            if st.stop {
                return;
            }
        }
        match beat.beat_by(shared, true) {
            Ok(p) => {
                if failing {
                    log::info!(
                        "heartbeat for {}: registered again at {}",
                        beat.addr,
                        beat.url
                    );
                    failing = false;
                }
                period = p;
                backoff = FIRST_BACKOFF;
                next = Instant::now() + period;
            }
            Err(e) if e.is_transient() => {
                if shared.state.lock().stop {
                    // The stop interrupted this beat.
                    return;
                }
                if !failing {
                    log::warn!("heartbeat for {}: {e}; retrying", beat.addr);
                    failing = true;
                }
                // Capped at the period so a registry that comes back sees
                // the server within one period; jittered so that a restart
                // is not met by every server at the same instant.
                next = Instant::now() + jitter(backoff.min(period), 0.5).min(period);
                backoff = (backoff * 2).min(period);
            }
            Err(e) => {
                log::error!("heartbeat for {} stopped: {e}", beat.addr);
                shared.state.lock().end(index, e);
                return;
            }
        }
    }
}

/// The IP of the registry at `url` (`http://host:port/...`), for its UDP
/// port: the first address its host resolves to.
fn registry_ip(url: &str) -> Option<IpAddr> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let with_port = if host.ends_with(']') || !host.contains(':') {
        format!("{host}:80")
    } else {
        host.to_string()
    };
    with_port.to_socket_addrs().ok()?.next().map(|a| a.ip())
}

/// A socket connected to the registry's UDP port `to`, whose receives
/// wait at most `wait`.
fn udp_socket(to: SocketAddr, wait: Duration) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any)?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(wait))?;
    Ok(socket)
}

/// The code of the reply to the datagram stamped `stamp`; `None` when
/// none came within the socket's wait. Replies to earlier datagrams
/// (late, or duplicated on the way) are skipped.
fn await_reply(socket: &UdpSocket, stamp: u64) -> std::io::Result<Option<Code>> {
    let wait = socket.read_timeout()?.unwrap_or(MIN_UDP_WAIT);
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; wire::REPLY_LEN + 1];
    // Bounded: each pass takes a datagram or ends at the deadline.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        let got = socket.recv(&mut buf);
        match got {
            Ok(n) => {
                if let Some((code, echoed)) = wire::decode_reply(&buf[..n])
                    && echoed == stamp
                {
                    socket.set_read_timeout(Some(wait))?;
                    return Ok(Some(code));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                socket.set_read_timeout(Some(wait))?;
                return Ok(None);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes `addr` from `service` at the registry once, without a
/// [`Heartbeat`]: `Ok(true)` when it was removed, `Ok(false)` when it was not
/// registered.
///
/// # Errors
///
/// [`Error::InvalidAddr`] or [`Error::InvalidService`] for bad input,
/// [`Error::Unreachable`] or [`Error::Status`] when the call fails (a
/// registry that only speaks the seed's protocol answers 405).
pub fn deregister(
    registry_url: &str,
    service: &str,
    addr: &str,
    token: Option<&str>,
) -> Result<bool> {
    let mut options = CallOptions::new();
    if let Some(t) = token {
        options = options.token(t);
    }
    deregister_with(registry_url, service, addr, &options)
}

/// [`deregister`] with [`CallOptions`]: a token, and with the `tls`
/// feature the certificate authority of an `https://` registry.
///
/// # Errors
///
/// As [`deregister`], and [`Error::InvalidConfig`] for a CA file that
/// cannot be read or holds no certificate, or an `https://` URL in a build
/// without the `tls` feature.
pub fn deregister_with(
    registry_url: &str,
    service: &str,
    addr: &str,
    options: &CallOptions,
) -> Result<bool> {
    validate_addr(addr)?;
    let url = service_url(registry_url, service)?;
    let agent = options.agent(&url)?;
    let auth = client::bearer(options.token.as_deref());
    let headers: Vec<(&str, &str)> = std::iter::once((HEADER_SERVER, addr))
        .chain(auth.iter().map(|(n, v)| (*n, v.as_str())))
        .collect();
    let reply = client::call(&agent, Verb::Delete, &url, &headers)?;
    if reply.status == 404 {
        return Ok(false);
    }
    reply.ok(&url).map(|_| true)
}

/// Sets the status of `addr`, registered in `service` at the registry, once,
/// without a [`Heartbeat`] (what `regcenter drain` and `undrain` do):
/// `Ok(true)` when the registry acknowledged it, `Ok(false)` when `addr` is
/// not registered there, and then nothing is sent.
///
/// The status travels on a POST, which is also a renewal that sets the
/// entry's weight, metadata and TTL: so the entry is read first (its JSON
/// listing) and the POST repeats its weight and metadata, and asks for the
/// time it had left as its TTL, so that its deadline stays where its own
/// heartbeat put it. A heartbeat that sends its own status (see
/// [Draining](Heartbeat#draining)) overrides this one at its next beat.
///
/// ```
/// use regcenter::{CallOptions, RegistryServer, Status};
///
/// let server = RegistryServer::start_local()?;
/// server.registry().put("arith", "tcp@127.0.0.1:7001")?;
/// let options = CallOptions::new();
/// assert!(regcenter::set_status(server.url(), "arith", "tcp@127.0.0.1:7001", Status::Draining, &options)?);
/// assert!(server.registry().alive("arith").is_empty());
/// // Not registered: nothing is sent.
/// assert!(!regcenter::set_status(server.url(), "arith", "tcp@127.0.0.1:7002", Status::Up, &options)?);
/// server.shutdown()?;
/// # Ok::<(), regcenter::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidAddr`], [`Error::InvalidService`] or
/// [`Error::InvalidConfig`] for bad input; [`Error::Unreachable`] or
/// [`Error::Status`] when a call fails; [`Error::BadResponse`] for a
/// registry that only speaks the seed's protocol, which has no statuses,
/// or a listing that cannot be read.
pub fn set_status(
    registry_url: &str,
    service: &str,
    addr: &str,
    status: Status,
    options: &CallOptions,
) -> Result<bool> {
    validate_addr(addr)?;
    let url = service_url(registry_url, service)?;
    let listing = crate::discovery::list_json_with(registry_url, service, options)?;
    let bad = |reason: String| Error::BadResponse {
        url: url.clone(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&listing)
        .map_err(|e| bad(format!("its JSON listing does not parse: {e}")))?;
    let servers = json["servers"]
        .as_array()
        .ok_or_else(|| bad("its JSON listing has no \"servers\" list".into()))?;
    let Some(entry) = servers.iter().find(|e| e["addr"] == addr) else {
        return Ok(false);
    };
    let mut headers: Vec<(&str, String)> = vec![(HEADER_SERVER, addr.to_string())];
    headers.extend(client::bearer(options.token.as_deref()));
    if let Some(w) = entry["weight"].as_u64() {
        headers.push((HEADER_WEIGHT, w.to_string()));
    }
    let meta: Vec<(String, String)> = entry["meta"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    if !meta.is_empty() {
        headers.push((HEADER_META, encode_meta(&meta)));
    }
    // `null` is an entry that never expires: the registry's default TTL
    // gave it that, and asking for none keeps it.
    if let Some(ms) = entry["expires_in_ms"].as_u64() {
        headers.push((
            HEADER_TTL,
            format_duration(Duration::from_millis(ms.max(1))),
        ));
    }
    headers.push((HEADER_STATUS, status.as_str().to_string()));
    let agent = options.agent(&url)?;
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    client::call(&agent, Verb::Post, &url, &headers)?.ok(&url)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_before_any_call() {
        let url = "http://127.0.0.1:9/myRPC/registry";
        assert!(matches!(
            Heartbeat::builder(url, "a b").start(),
            Err(Error::InvalidAddr { .. })
        ));
        assert!(matches!(
            Heartbeat::builder(url, "a").service("a/b").start(),
            Err(Error::InvalidService { .. })
        ));
        assert!(matches!(
            Heartbeat::builder(url, "a").weight(0).start(),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(matches!(
            Heartbeat::builder(url, "a").period(Duration::ZERO).start(),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
