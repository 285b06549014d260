//! `RegistryServer`: the listener, the intake, the pool and the guard, the
//! wiring of routes, and a stop that no client can hold up.

mod consul;
mod http;
mod lanes;
mod metrics;
mod pool;
mod prom;
mod refusals;
mod route;
#[cfg(feature = "etcd")]
pub(crate) mod shared;
#[cfg(not(feature = "etcd"))]
pub(crate) mod shared {
    //! Without the `etcd` feature there is no shared store: these types
    //! have no values, so the routes' calls into them are never made.

    use crate::error::Result;
    use crate::registry::{PutOptions, PutOutcome};

    #[derive(Debug)]
    pub(crate) enum Inner {}

    impl Inner {
        pub(crate) fn degraded(&self) -> bool {
            match *self {}
        }
        pub(crate) fn put(&self, _: &str, _: &str, _: &PutOptions) -> Result<PutOutcome> {
            match *self {}
        }
        pub(crate) fn remove(&self, _: &str, _: &str) -> Result<bool> {
            match *self {}
        }
        pub(crate) fn renew_existing(&self, _: &str, _: &str) -> Result<bool> {
            match *self {}
        }
        pub(crate) fn catch_up(&self, _: &str, _: &[(String, String)], _: u64) {
            match *self {}
        }
        pub(crate) fn applied(&self) -> u64 {
            match *self {}
        }
    }

    pub(crate) enum Shared {}

    impl Shared {
        pub(crate) fn stop(&mut self) -> bool {
            match *self {}
        }
    }
}
mod status;
pub(crate) mod udp;
mod watch;
mod worker;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::protocol::DEFAULT_PATH;
use crate::registry::{Registry, RegistryBuilder, Sweeper, snapshot};
use http::Front;
use metrics::Metrics;
use pool::Pool;
use route::RouteConfig;
use watch::Watchers;
use worker::Ctx;

/// Builds and starts a [`RegistryServer`].
///
/// ```
/// use regcenter::RegistryServer;
/// use std::time::Duration;
///
/// let server = RegistryServer::builder()
///     .addr("127.0.0.1:0")
///     .ttl(Duration::from_secs(10))
///     .threads(2)
///     .start()?;
/// assert!(server.url().ends_with("/myRPC/registry"));
/// server.shutdown()?;
/// # Ok::<(), regcenter::Error>(())
/// ```
#[must_use]
pub struct RegistryServerBuilder {
    addr: String,
    path: String,
    threads: usize,
    token: Option<String>,
    protect_reads: bool,
    snapshot: Option<std::path::PathBuf>,
    snapshot_interval: Duration,
    limits: Limits,
    table: RegistryBuilder,
    registry: Option<Registry>,
    udp: Udp,
    udp_advertised: Option<u16>,
    #[cfg(feature = "tls")]
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    #[cfg(feature = "etcd")]
    etcd: Option<shared::SharedConfig>,
}

/// Where UDP renewals are received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Udp {
    Off,
    /// The HTTP port's number.
    SamePort,
    Port(u16),
}

impl RegistryServerBuilder {
    /// Receives renewals over UDP too (the README's "UDP renewals"): on the
    /// port number of HTTP, on the same IP, and POST answers advertise it
    /// (`X-Myrpc-Udp: PORT`) so that a [`Heartbeat`](crate::Heartbeat)
    /// renews by datagram. When HTTP's port was chosen by the system
    /// (port 0) and its number is taken for UDP, any free port is used.
    /// `false` turns it off. Defaults to on.
    pub fn udp(mut self, on: bool) -> Self {
        self.udp = if on { Udp::SamePort } else { Udp::Off };
        self
    }

    /// The UDP port POST answers advertise, when datagrams reach the
    /// registry through a port mapping or a forwarder (a container's
    /// published port): the port they are sent to, not the one the
    /// registry binds. Defaults to the port bound.
    pub fn udp_advertised_port(mut self, port: u16) -> Self {
        self.udp_advertised = Some(port);
        self
    }

    /// Receives UDP renewals on this port (0: any free one) instead of
    /// HTTP's port number; turns UDP on. Defaults to HTTP's port number.
    pub fn udp_port(mut self, port: u16) -> Self {
        self.udp = Udp::Port(port);
        self
    }

    /// Keeps the table in etcd, reached through the JSON gateway of
    /// `endpoints` (e.g. `http://127.0.0.1:2379`, tried in turn), so that
    /// every front-end on the same etcd and prefix serves one registry:
    /// the same protocol, with registrations and changes written to etcd
    /// and heartbeats that change nothing kept by the front-end that
    /// receives them (docs/ETCD.md). The start fails when etcd cannot be
    /// reached. Not with a snapshot (etcd keeps the state). Defaults to
    /// none: the table is this server's own.
    #[cfg(feature = "etcd")]
    pub fn etcd(mut self, endpoints: &[&str]) -> Self {
        let endpoints = endpoints.iter().map(|e| e.to_string()).collect();
        let old = self.etcd.take();
        let mut cfg = shared::SharedConfig::new(endpoints);
        if let Some(old) = old {
            cfg.prefix = old.prefix;
            cfg.lease_ttl = old.lease_ttl;
        }
        self.etcd = Some(cfg);
        self
    }

    /// The key prefix in etcd, that of the library's `EtcdRegistration` so
    /// that each lists the other's entries. Defaults to `/regcenter`.
    #[cfg(feature = "etcd")]
    pub fn etcd_prefix(mut self, prefix: &str) -> Self {
        let cfg = self
            .etcd
            .get_or_insert_with(|| shared::SharedConfig::new(Vec::new()));
        cfg.prefix = prefix.to_string();
        self
    }

    /// The TTL of this front-end's own lease in etcd (whole seconds, at
    /// least 2): when it dies, the entries only it heard from are handed
    /// to the others this long after, and deleted one TTL of theirs later
    /// if nobody hears from them. Defaults to 3 s.
    #[cfg(feature = "etcd")]
    pub fn etcd_lease_ttl(mut self, ttl: Duration) -> Self {
        let cfg = self
            .etcd
            .get_or_insert_with(|| shared::SharedConfig::new(Vec::new()));
        cfg.lease_ttl = ttl;
        self
    }

    /// The address to listen on; port 0 picks a free port (read it back with
    /// [`RegistryServer::local_addr`]). Defaults to `127.0.0.1:9999`.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = addr.into();
        self
    }

    /// The base path of the protocol. Defaults to `/myRPC/registry`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// How many threads answer requests at least; more are started while
    /// requests wait with every thread held by clients that do not read
    /// (up to one per connection), and end after 5 s without work.
    /// Defaults to the number of cores.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// A bearer token that POST and DELETE must carry
    /// (`Authorization: Bearer <token>`), else 401. Read it from a file or
    /// the environment, never from a command line. Defaults to none: anyone
    /// who can connect may register.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Requires the token for listing (GET) as well. Defaults to off:
    /// reads stay open.
    pub fn protect_reads(mut self, on: bool) -> Self {
        self.protect_reads = on;
        self
    }

    /// Keeps the table in `path`: loaded at start (entries already expired
    /// are dropped; a file that cannot be read or parsed is reported, kept
    /// as `FILE.corrupt`, and the registry starts empty; `start` fails when
    /// it cannot be kept aside), written atomically every
    /// [`snapshot_interval`](Self::snapshot_interval) and at shutdown.
    /// A server that restores none (none set, none found, or one set aside)
    /// says in its listings, for its maximum TTL, that it is
    /// [`recovering`](Registry::recovering). Defaults to none.
    pub fn snapshot(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.snapshot = Some(path.into());
        self
    }

    /// How often the snapshot is written while the registry runs: what a
    /// crash can lose is at most the changes of one interval. Defaults to
    /// 5 s.
    pub fn snapshot_interval(mut self, every: Duration) -> Self {
        self.snapshot_interval = every;
        self
    }

    /// Closes a kept-alive connection on which nothing arrived for this
    /// long. Defaults to 60 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Closes a connection whose request head has not arrived completely
    /// this long after its first byte (slow senders). Defaults to 10 s.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout;
        self
    }

    /// Most connections open at once; newer ones beyond it are closed.
    /// Defaults to half the descriptor limit (`RLIMIT_NOFILE`) less a
    /// reserve, at most 10 000: each connection costs tiny_http a thread and
    /// two descriptors.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = Some(max);
        self
    }

    /// Most long-polls parked at once; beyond it a long-poll is answered
    /// 503 with `Retry-After`. Defaults to three quarters of
    /// [`max_connections`](Self::max_connections): each parked long-poll
    /// holds a connection, and the rest stay for heartbeats and reads.
    pub fn max_watchers(mut self, max: usize) -> Self {
        self.limits.max_watchers = Some(max);
        self
    }

    /// TTL of an entry whose server asks for none; zero means never expire.
    /// Defaults to 5 s. Ignored when [`registry`](Self::registry) is given.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.table = self.table.default_ttl(ttl);
        self
    }

    /// Smallest TTL a server may ask for. Defaults to 1 s. Ignored when
    /// [`registry`](Self::registry) is given.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.table = self.table.min_ttl(ttl);
        self
    }

    /// Largest TTL a server may ask for. Defaults to 1 h. Ignored when
    /// [`registry`](Self::registry) is given.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.table = self.table.max_ttl(ttl);
        self
    }

    /// Most entries the registry holds. Defaults to 100 000. Ignored when
    /// [`registry`](Self::registry) is given.
    pub fn max_entries(mut self, max: usize) -> Self {
        self.table = self.table.max_entries(max);
        self
    }

    /// Registers any address of visible ASCII without a comma, not only
    /// addresses a client can dial (`proto@rest`, `host:port` for `tcp`,
    /// `udp` and `http`). Defaults to off: others are answered 400. Ignored
    /// when [`registry`](Self::registry) is given.
    pub fn free_form_addresses(mut self, on: bool) -> Self {
        self.table = self.table.free_form_addresses(on);
        self
    }

    /// The clock deciding expiry. Defaults to the system clock. Ignored when
    /// [`registry`](Self::registry) is given.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.table = self.table.clock(clock);
        self
    }

    /// Serves an existing registry table instead of building one; the TTL,
    /// limit and clock settings above then do not apply. Defaults to a new
    /// table.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Serves HTTPS with the PEM certificate chain in `cert` (the server's
    /// certificate first, then any intermediates) and the unencrypted PEM
    /// private key in `key` (PKCS#8, PKCS#1 or SEC1), both read at
    /// [`start`](Self::start). TLS 1.2 and 1.3, through rustls; clients
    /// then use `https://` URLs. Defaults to plain HTTP.
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Binds the listener, loads the snapshot, and starts the worker,
    /// sweeper and snapshot threads.
    ///
    /// A start refused for its settings has no effect at all: no thread is
    /// started, no port held, no file read or written.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an address that does not parse, a path
    /// that does not start with `/` or ends with one, zero threads, invalid
    /// TTL settings, a token that is not visible ASCII, a snapshot path
    /// whose directory is missing or not writable or that names a
    /// directory, or a damaged snapshot that cannot be set aside, a TLS
    /// certificate or key file that cannot be read, holds no certificate or
    /// key, or a key that does not match the certificate (setting
    /// `tls_cert` or `tls_key`, with the file and the cause);
    /// [`Error::Io`] when binding, spawning or the first snapshot write
    /// fails.
    pub fn start(self) -> Result<RegistryServer> {
        // Every setting is checked before anything is bound, spawned, read
        // or written: a start that fails leaves nothing behind.
        let bind: SocketAddr = self.addr.parse().map_err(|_| {
            Error::config(
                "addr",
                format!(
                    "{:?} is not an IP:port address such as 127.0.0.1:9999",
                    self.addr
                ),
            )
        })?;
        validate_path(&self.path)?;
        if self.threads == 0 {
            return Err(Error::config("threads", "must be at least 1"));
        }
        let max_connections = match self.limits.max_connections {
            Some(0) => return Err(Error::config("max_connections", "must be at least 1")),
            Some(n) => n,
            None => default_max_connections(),
        };
        for (setting, d) in [
            ("idle_timeout", self.limits.idle_timeout),
            ("header_timeout", self.limits.header_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::config(setting, "must be above zero"));
            }
        }
        if let Some(t) = &self.token {
            crate::client::validate_token(t)?;
        }
        if self.protect_reads && self.token.is_none() {
            return Err(Error::config("protect_reads", "needs a token"));
        }
        let max_watchers = match self.limits.max_watchers {
            Some(0) => return Err(Error::config("max_watchers", "must be at least 1")),
            Some(n) => n,
            None => (max_connections / 4).saturating_mul(3).max(1),
        };
        if self.snapshot_interval.is_zero() {
            return Err(Error::config("snapshot_interval", "must be above zero"));
        }
        if let Some(path) = &self.snapshot {
            snapshot::check_path(path)?;
        }
        #[cfg(feature = "etcd")]
        if let Some(e) = &self.etcd {
            if e.endpoints.is_empty() {
                return Err(Error::config(
                    "etcd",
                    "no endpoint given; e.g. http://127.0.0.1:2379",
                ));
            }
            if self.snapshot.is_some() {
                return Err(Error::config(
                    "snapshot",
                    "not with etcd, which keeps the table; leave one of them out",
                ));
            }
        }
        #[cfg(feature = "tls")]
        let identity = match &self.tls {
            Some((cert, key)) => Some(http::load_identity(cert, key)?),
            None => None,
        };
        #[cfg(feature = "tls")]
        let secure = identity.is_some();
        #[cfg(not(feature = "tls"))]
        let secure = false;
        let registry = match self.registry {
            Some(r) => r,
            None => self.table.build()?,
        };
        // Bound before the snapshot is read: a port in use fails the start
        // before a damaged file is set aside or a given table is filled.
        // The first write follows the load at once, before anything is
        // started or served (see `write_first`).
        let listener = nodelay_listener(bind).map_err(|e| Error::io(format!("bind {bind}"), e))?;
        if let Some(path) = &self.snapshot {
            snapshot::load(&registry, path)?;
            snapshot::write_first(&registry, path)?;
        }
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io(format!("bind {bind}"), e))?;
        // With TLS, tiny_http serves the decrypted connections on a
        // listener of its own on loopback (see `http/tls.rs`).
        #[cfg(feature = "tls")]
        let (listener, public) = match identity {
            Some(_) => {
                let inner = nodelay_listener(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .map_err(|e| Error::io("bind the loopback listener behind TLS", e))?;
                (inner, Some(listener))
            }
            None => (listener, None),
        };
        let front = Front::new(listener)
            .map_err(|e| Error::io(format!("start the HTTP server on {bind}"), e))?;
        let front = Arc::new(front);
        let scheme = if secure { "https" } else { "http" };
        let mut server = RegistryServer {
            url: format!("{scheme}://{local_addr}{}", self.path),
            local_addr,
            registry: registry.clone(),
            ctx: None,
            threads: self.threads,
            guard: None,
            sweeper: None,
            timer: None,
            subscription: None,
            snapshot: None,
            udp: None,
            shared: None,
            #[cfg(feature = "tls")]
            tls: None,
        };
        let port = local_addr.port();
        // Thread names carry the port (the OS keeps 15 bytes of a name), so
        // an operator or a test can tell whose threads they are.
        server.sweeper = Some(registry.start_sweeper_named(format!("rc{port}-sweep"))?);
        if let Some(path) = self.snapshot {
            let every = self.snapshot_interval;
            server.snapshot = Some(snapshot::Writer::start(
                registry.clone(),
                path,
                every,
                format!("rc{port}-snap"),
            )?);
        }
        #[cfg(feature = "etcd")]
        if let Some(e) = self.etcd {
            server.shared = Some(shared::Shared::start(
                e,
                registry.clone(),
                server.url.clone(),
                &format!("rc{port}"),
            )?);
        }
        #[cfg(feature = "etcd")]
        let shared = server.shared.as_ref().map(shared::Shared::inner);
        #[cfg(not(feature = "etcd"))]
        let shared = None;
        let health = server.snapshot.as_ref().map(snapshot::Writer::health);
        let metrics = Arc::new(Metrics::new(self.threads, health));
        let udp_bind = match self.udp {
            Udp::Off => None,
            Udp::SamePort => Some((SocketAddr::new(bind.ip(), port), bind.port() == 0)),
            Udp::Port(p) => Some((SocketAddr::new(bind.ip(), p), false)),
        };
        if let Some((at, or_any)) = udp_bind {
            let token = self.token.as_ref().map(|t| t.as_bytes().to_vec());
            server.udp = Some(
                udp::UdpRenewals::start(
                    at,
                    or_any,
                    registry.clone(),
                    shared.clone(),
                    metrics.clone(),
                    token,
                    format!("rc{port}-udp"),
                )
                .map_err(|e| Error::io(format!("bind UDP {at}"), e))?,
            );
        }
        let server_has_token = self.token.is_some();
        let cfg = RouteConfig {
            path: self.path,
            token: self.token,
            protect_reads: self.protect_reads,
            local_ip: local_addr.ip(),
            udp_port: server
                .udp
                .as_ref()
                .map(|u| self.udp_advertised.unwrap_or(u.port())),
            shared,
        };
        // Each connection has at most one request in service, so the pool
        // never needs more threads than connections.
        let pool = Pool::start(
            self.threads,
            self.threads.saturating_add(max_connections),
            format!("rc{port}-http"),
        )
        .map_err(|e| Error::io("spawn a registry worker thread", e))?;
        let ctx = Arc::new(Ctx {
            front: front.clone(),
            registry: registry.clone(),
            cfg,
            watchers: Watchers::new(max_watchers, registry.clone()),
            lanes: lanes::Lanes::default(),
            pool,
            metrics,
            refusals: refusals::Refusals::new(),
            url: server.url.clone(),
            writing: parking_lot::Mutex::new(std::collections::HashMap::new()),
            intakes: parking_lot::Mutex::new(Vec::new()),
            orphan: parking_lot::Mutex::new(None),
            // The longest long-poll, its random extra, and an idle
            // connection's life after it, with a minute to spare.
            drain_quiet: route::MAX_WAIT * 17 / 16
                + self.limits.idle_timeout
                + Duration::from_secs(60),
            name: format!("rc{port}-intake"),
        });
        server.ctx = Some(ctx.clone());
        // A weak reference: the registry may outlive the server.
        let weak = Arc::downgrade(&ctx);
        server.subscription = Some(registry.subscribe(Arc::new(move |services: &[Arc<str>]| {
            if let Some(ctx) = weak.upgrade() {
                let woken = ctx.watchers.take_services(services);
                worker::answer_parked(&ctx, woken);
            }
        })));
        let c = ctx.clone();
        server.timer = Some(
            thread::Builder::new()
                .name(format!("rc{port}-watch"))
                .spawn(move || c.watchers.run_timer(|due| worker::answer_parked(&c, due)))
                .map_err(|e| Error::io("spawn the watch timer thread", e))?,
        );
        // Unless a snapshot was restored into it, the table lacks the
        // servers registered before this start until they beat again: its
        // listings say so for its maximum TTL (`Registry::recovering`).
        registry.begin_recovery();
        if let Some(left) = registry.recovery_left() {
            ctx.watchers.recovery_ends_in(left);
        }
        worker::start_intake(&ctx, front.current())
            .map_err(|e| Error::io("spawn the intake thread", e))?;
        let guard_cfg = http::GuardConfig {
            idle_timeout: self.limits.idle_timeout,
            header_timeout: self.limits.header_timeout,
            max_connections,
        };
        server.guard = Some(
            http::start_guard(ctx, guard_cfg, format!("rc{port}-guard"))
                .map_err(|e| Error::io("spawn the connection guard thread", e))?,
        );
        #[cfg(feature = "tls")]
        if let (Some(public), Some(identity)) = (public, identity) {
            let limits = http::TlsLimits {
                handshake_timeout: self.limits.header_timeout,
                max_connections,
            };
            server.tls = Some(
                http::TlsFront::start(
                    public,
                    front.local,
                    identity,
                    limits,
                    format!("rc{port}-tls"),
                )
                .map_err(|e| Error::io("spawn the TLS acceptor thread", e))?,
            );
        }
        if server_has_token && !secure && !bind.ip().is_loopback() {
            log::warn!(
                "serving on {bind} without TLS: the bearer token travels in clear text to \
                 anyone on the path; serve HTTPS (a regcenter built with the `tls` feature, \
                 --tls-cert and --tls-key)"
            );
        }
        log::info!(
            "regcenter serving {} with {} threads",
            server.url,
            server.threads
        );
        Ok(server)
    }
}

fn validate_path(path: &str) -> Result<()> {
    let ok = path.len() > 1
        && path.starts_with('/')
        && !path.ends_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "path",
            format!("{path:?} must start with /, not end with /, and use A-Z a-z 0-9 / . _ -"),
        ))
    }
}

/// Longest one send may block on a client that does not read (the guard
/// bounds a whole answer, `guard.rs`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop lets answers in writing finish before it shuts every
/// connection down.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Bounds on what clients may hold.
#[derive(Debug, Clone)]
struct Limits {
    idle_timeout: Duration,
    header_timeout: Duration,
    max_connections: Option<usize>,
    max_watchers: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_connections: None,
            max_watchers: None,
        }
    }
}

/// Half the descriptor limit less a reserve, at most 10 000: each connection
/// costs tiny_http two descriptors and a thread.
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft.saturating_sub(64) / 2).clamp(16, 10_000)
}

/// A listener with `TCP_NODELAY`, which Linux copies to every accepted
/// socket: tiny_http sets none, and without it keep-alive clients wait on
/// delayed ACKs (about 1 400 requests/s at 64 kept-alive connections,
/// measured, against 36 000 with it).
fn nodelay_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    // Also copied to accepted sockets: a client that stops reading cannot
    // hold a request thread in a blocked write for longer than this.
    // (SO_RCVTIMEO is copied too, but on the listener it would make
    // accept() time out, which ends tiny_http's accept thread.)
    socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A running registry: an HTTP server speaking protocol v1 over a
/// [`Registry`] table.
///
/// [`shutdown`](RegistryServer::shutdown) (or dropping the handle) stops and
/// joins every thread it started, closes the listening port, and closes the
/// connections clients keep alive (on Linux), so no client waits for an
/// answer that will not come. tiny_http's own connection threads end when
/// their connection closes; they are not joined.
#[must_use = "dropping the RegistryServer shuts it down"]
pub struct RegistryServer {
    url: String,
    local_addr: SocketAddr,
    registry: Registry,
    ctx: Option<Arc<Ctx>>,
    threads: usize,
    guard: Option<JoinHandle<()>>,
    sweeper: Option<Sweeper>,
    timer: Option<JoinHandle<()>>,
    subscription: Option<u64>,
    snapshot: Option<snapshot::Writer>,
    udp: Option<udp::UdpRenewals>,
    /// The link to etcd of a front-end on it.
    shared: Option<shared::Shared>,
    #[cfg(feature = "tls")]
    tls: Option<http::TlsFront>,
}

impl RegistryServer {
    /// A builder with the defaults: `127.0.0.1:9999`, `/myRPC/registry`,
    /// TTL 5 s, one thread per core.
    pub fn builder() -> RegistryServerBuilder {
        RegistryServerBuilder {
            addr: "127.0.0.1:9999".into(),
            path: DEFAULT_PATH.into(),
            threads: thread::available_parallelism().map_or(2, |n| n.get()),
            token: None,
            protect_reads: false,
            snapshot: None,
            snapshot_interval: Duration::from_secs(5),
            limits: Limits::default(),
            table: Registry::builder(),
            registry: None,
            udp: Udp::SamePort,
            udp_advertised: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "etcd")]
            etcd: None,
        }
    }

    /// Starts a registry for tests: `127.0.0.1` on a free port, TTL 1 s
    /// (servers may ask for as little as 50 ms), two threads.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when binding or spawning fails.
    pub fn start_local() -> Result<RegistryServer> {
        RegistryServer::builder()
            .addr("127.0.0.1:0")
            .ttl(Duration::from_secs(1))
            .min_ttl(Duration::from_millis(50))
            .threads(2)
            .start()
    }

    /// The address the server listens on, with the real port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry URL: `http://{local_addr}{path}`, or `https://` when
    /// the server serves TLS (`RegistryServerBuilder::tls`, feature `tls`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table the server serves; changes made through it are served at
    /// once.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stops accepting, finishes the requests being answered, and joins
    /// every thread the server started.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when a worker thread had panicked.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(ctx) = self.ctx.take() else {
            return Ok(());
        };
        let front = ctx.front.clone();
        front.stop();
        // The guard first: it may start the intake of a rebuilt server.
        let mut panicked = false;
        if let Some(g) = self.guard.take() {
            panicked |= g.join().is_err();
        }
        panicked |= ctx.join_intakes();
        if let Some(id) = self.subscription.take() {
            self.registry.unsubscribe(id);
        }
        // Every parked long-poll is answered with the current list; answers
        // in writing get a moment to finish, then every connection is shut
        // down, which ends any write a client holds by not reading.
        worker::answer_parked(&ctx, ctx.watchers.stop());
        if let Some(t) = self.timer.take() {
            panicked |= t.join().is_err();
        }
        ctx.pool.wait_quiet(std::time::Instant::now() + STOP_GRACE);
        front.close_listener();
        #[cfg(feature = "tls")]
        if let Some(t) = self.tls.as_mut() {
            t.close();
        }
        let closed = http::shutdown_accepted(front.local);
        log::debug!("closed {closed} kept-alive connections");
        // Their relays end as their loopback side closes.
        #[cfg(feature = "tls")]
        if let Some(mut t) = self.tls.take() {
            panicked |= t.stop();
        }
        panicked |= ctx.pool.stop();
        // Every thread that refuses has ended: what the refusal log still
        // counts is written now, or never.
        ctx.refusals.finish();
        if let Some(mut u) = self.udp.take() {
            panicked |= u.stop();
        }
        // Nothing renews or writes any more: the claims can go.
        if let Some(mut s) = self.shared.take() {
            panicked |= s.stop();
        }
        if let Some(s) = self.sweeper.take() {
            panicked |= s.stop().is_err();
        }
        let snapshot = self.snapshot.take().map(|mut w| w.stop());
        // The last references: dropping them closes the listening socket,
        // but tiny_http's accept thread closes its own copy a moment later;
        // wait for it, so the port is free when shutdown returns.
        drop(ctx);
        drop(front);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while http::listening(self.local_addr) && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        log::info!("regcenter at {} shut down", self.url);
        if panicked {
            return Err(Error::Stopped {
                what: format!("registry server {} (a thread panicked)", self.url),
            });
        }
        if let Some(Err(e)) = snapshot {
            return Err(Error::io("write the final snapshot", e));
        }
        Ok(())
    }

    /// Writes the snapshot now, as the server does every
    /// [`snapshot_interval`](RegistryServerBuilder::snapshot_interval) (the
    /// binary does it on SIGUSR1, e.g. before a backup). Returns the file
    /// written, `None` when the server keeps no snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when writing the file fails.
    pub fn write_snapshot(&self) -> Result<Option<&std::path::Path>> {
        let Some(w) = &self.snapshot else {
            return Ok(None);
        };
        w.write_now()
            .map_err(|e| Error::io(format!("write the snapshot {}", w.path().display()), e))?;
        Ok(Some(w.path()))
    }

    /// The UDP address renewals are received on, `None` when UDP is off
    /// ([`RegistryServerBuilder::udp`]).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
            .as_ref()
            .map(|u| SocketAddr::new(self.local_addr.ip(), u.port()))
    }

    /// How many long-poll requests are parked, waiting for a change.
    pub fn parked(&self) -> usize {
        self.ctx.as_ref().map_or(0, |c| c.watchers.len())
    }

    /// How many times the HTTP server was rebuilt after its accept thread
    /// died (descriptor exhaustion and other accept errors).
    pub fn rebuilds(&self) -> u64 {
        self.ctx.as_ref().map_or(0, |c| c.front.rebuilds())
    }
}

impl std::fmt::Debug for RegistryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryServer")
            .field("url", &self.url)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
