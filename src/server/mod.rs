//! `RegistryServer`: the listener, the worker threads, the wiring of routes.

mod conns;
mod route;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::protocol::DEFAULT_PATH;
use crate::registry::{Registry, RegistryBuilder, Sweeper};
use route::{Body, Method, Request, Response, RouteConfig};

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
    table: RegistryBuilder,
    registry: Option<Registry>,
}

impl RegistryServerBuilder {
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

    /// How many threads answer requests. Defaults to the number of cores.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
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

    /// Binds the listener and starts the worker and sweeper threads.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an address that does not parse, a path
    /// that does not start with `/` or ends with one, zero threads, or
    /// invalid TTL settings; [`Error::Io`] when binding or spawning fails.
    pub fn start(self) -> Result<RegistryServer> {
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
        let registry = match self.registry {
            Some(r) => r,
            None => self.table.build()?,
        };
        let listener = nodelay_listener(bind).map_err(|e| Error::io(format!("bind {bind}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io(format!("read the address bound for {bind}"), e))?;
        let http = tiny_http::Server::from_listener(listener, None).map_err(|e| {
            Error::io(
                format!("start the HTTP server on {local_addr}"),
                io::Error::other(e),
            )
        })?;
        let http = Arc::new(http);
        let mut server = RegistryServer {
            url: format!("http://{local_addr}{}", self.path),
            local_addr,
            registry: registry.clone(),
            http: Some(http.clone()),
            workers: Vec::new(),
            sweeper: None,
        };
        let port = local_addr.port();
        // Thread names carry the port (the OS keeps 15 bytes of a name), so
        // an operator or a test can tell whose threads they are.
        server.sweeper = Some(registry.start_sweeper_named(format!("rc{port}-sweep"))?);
        let cfg = Arc::new(RouteConfig { path: self.path });
        for i in 0..self.threads {
            let (http, registry, cfg) = (http.clone(), registry.clone(), cfg.clone());
            let worker = thread::Builder::new()
                .name(format!("rc{port}-http{i}"))
                .spawn(move || serve(&http, &registry, &cfg))
                .map_err(|e| Error::io("spawn a registry worker thread", e))?;
            server.workers.push(worker);
        }
        log::info!(
            "regcenter serving {} with {} threads",
            server.url,
            server.workers.len()
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

/// A listener with `TCP_NODELAY`, which Linux copies to every accepted
/// socket: tiny_http sets none, and without it keep-alive clients wait on
/// delayed ACKs (DESIGN.md, "Measured facts").
fn nodelay_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
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
    http: Option<Arc<tiny_http::Server>>,
    workers: Vec<JoinHandle<()>>,
    sweeper: Option<Sweeper>,
}

impl RegistryServer {
    /// A builder with the defaults: `127.0.0.1:9999`, `/myRPC/registry`,
    /// TTL 5 s, one thread per core.
    pub fn builder() -> RegistryServerBuilder {
        RegistryServerBuilder {
            addr: "127.0.0.1:9999".into(),
            path: DEFAULT_PATH.into(),
            threads: thread::available_parallelism().map_or(2, |n| n.get()),
            table: Registry::builder(),
            registry: None,
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

    /// The registry URL: `http://{local_addr}{path}`.
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
        let Some(http) = self.http.take() else {
            return Ok(());
        };
        // One marker per worker: each recv() returns it once (CRATE-NOTES §1.2).
        for _ in 0..self.workers.len() {
            http.unblock();
        }
        let mut panicked = false;
        for w in self.workers.drain(..) {
            panicked |= w.join().is_err();
        }
        if let Some(s) = self.sweeper.take() {
            panicked |= s.stop().is_err();
        }
        // The last reference: dropping it closes the listening socket.
        drop(http);
        let closed = conns::shutdown_accepted(self.local_addr);
        log::debug!("closed {closed} kept-alive connections");
        log::info!("regcenter at {} shut down", self.url);
        if panicked {
            return Err(Error::Stopped {
                what: format!("registry server {} (a thread panicked)", self.url),
            });
        }
        Ok(())
    }
}

impl std::fmt::Debug for RegistryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryServer")
            .field("url", &self.url)
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn serve(http: &tiny_http::Server, registry: &Registry, cfg: &RouteConfig) {
    loop {
        match http.recv() {
            Ok(rq) => answer(rq, registry, cfg),
            // "thread unblocked": our shutdown.
            Err(e) if e.raw_os_error().is_none() => return,
            Err(e) => {
                log::error!("regcenter stopped accepting connections: {e}");
                return;
            }
        }
    }
}

fn answer(rq: tiny_http::Request, registry: &Registry, cfg: &RouteConfig) {
    let req = Request {
        method: match rq.method() {
            tiny_http::Method::Get => Method::Get,
            tiny_http::Method::Head => Method::Head,
            tiny_http::Method::Post => Method::Post,
            tiny_http::Method::Delete => Method::Delete,
            other => Method::Other(other.to_string()),
        },
        url: rq.url().to_string(),
        headers: rq
            .headers()
            .iter()
            .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
            .collect(),
    };
    let resp = route::handle(registry, cfg, &req);
    log::debug!("{:?} {} -> {}", req.method, req.url, resp.status);
    if let Err(e) = rq.respond(to_tiny(resp)) {
        log::debug!("answering {} failed: {e}", req.url);
    }
}

fn to_tiny(resp: Response) -> tiny_http::Response<BodyReader> {
    let headers = resp
        .headers
        .iter()
        .filter_map(|(n, v)| tiny_http::Header::from_bytes(n.as_bytes(), v.as_bytes()).ok())
        .collect();
    let len = resp.body.as_bytes().len();
    tiny_http::Response::new(
        tiny_http::StatusCode(resp.status),
        headers,
        BodyReader {
            body: resp.body,
            pos: 0,
        },
        Some(len),
        None,
    )
    // Keep Content-Length on large listings instead of switching to chunked.
    .with_chunked_threshold(usize::MAX)
}

/// Streams a body without copying a shared listing.
struct BodyReader {
    body: Body,
    pos: usize,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.body.as_bytes()[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}
