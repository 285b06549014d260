//! HTTPS (feature `tls`): TLS ends here, in front of tiny_http, which
//! serves the decrypted connections on a listener of its own on loopback.
//!
//! Why not tiny_http's own TLS (both measured here, tiny_http 0.12):
//!
//! | tiny_http feature | what a hostile client does to it |
//! |---|---|
//! | `ssl-openssl` | the handshake runs on tiny_http's only accept thread: one client that connects and sends nothing stops every other connection from being accepted (a second client got no answer in 3 s, and one 0.2 ms after the silent one left) |
//! | `ssl-rustls` (rustls 0.20, unmaintained) | the handshake runs on the connection's thread, but a plaintext `close_notify` alert as the first 7 bytes makes rustls 0.20 loop forever (RUSTSEC-2024-0336, never fixed in 0.20): one core at 100 % per such connection (1.9 s of CPU in 2 s), after its client has gone too, with no way to stop the thread |
//!
//! Here a thread per connection shakes hands with rustls 0.23 (the rustls
//! that ureq's TLS uses, so no crate is added), within the header timeout,
//! and only then connects to tiny_http's listener and relays bytes both
//! ways. Everything the connection guard does (`guard.rs`: idle, slow and
//! oversized heads, excess connections, answers not read, parked watchers
//! whose client left) then acts on the loopback connection, in plaintext,
//! and its last answers reach the client encrypted; closing the loopback
//! connection ends the relay, which closes the client's. What only this
//! side can see is bounded here: a handshake that does not finish within
//! the header timeout, more connections than `max_connections`, a client
//! that stops reading (no more is read from tiny_http for it, so the
//! guard's write limit cuts it).
//!
//! Cost: a relay thread and a loopback connection per client connection,
//! beside tiny_http's thread; tiny_http and the guard see the relay's
//! loopback address as the peer, and logs name it (the client's address is
//! logged at debug level when the relay starts).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// How often the acceptor looks up from its listener to see a stop. Relays
/// need no tick: a stop wakes them through a socket they all watch.
const TICK: Duration = Duration::from_millis(250);
/// Most plaintext held for tiny_http before the client's socket is read
/// again; a little more than one TLS record.
const MAX_PENDING: usize = 64 << 10;
/// How long connecting to tiny_http's loopback listener may take.
const INNER_CONNECT: Duration = Duration::from_secs(2);
/// Pause after an accept error (descriptors exhausted): the connection
/// waits in the backlog meanwhile instead of being refused.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Longest a client may leave encrypted bytes unread before its
/// connection is closed (the guard's write limit, on this side).
const WRITE_STALL: Duration = Duration::from_secs(10);

/// A certificate chain and its private key, checked.
#[derive(Clone)]
pub(crate) struct Identity(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity")
    }
}

/// Reads and checks a PEM certificate chain (leaf first) and its private
/// key: each file readable, PEM, holding what it should, the key usable
/// and matching the leaf certificate. Errors name the setting
/// (`tls_cert`, `tls_key`), the file and the cause.
pub(crate) fn load_identity(cert: &Path, key: &Path) -> Result<Identity> {
    let read = |setting: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                setting,
                format!("{}: reading it failed: {e}", path.display()),
            )
        })
    };
    let cert_pem = read("tls_cert", cert)?;
    let key_pem = read("tls_key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::config(
                "tls_cert",
                format!("{}: not a PEM certificate file: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(Error::config(
            "tls_cert",
            format!(
                "{}: holds no certificate (expected -----BEGIN CERTIFICATE-----, the server's first)",
                cert.display()
            ),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::config(
            "tls_key",
            format!(
                "{}: holds no usable private key ({e}); expected an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key",
                key.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config("tls_key", format!("no TLS version available: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => {
                    format!("is not the key of the certificate in {}", cert.display())
                }
                e => format!("not usable with the certificate in {}: {e}", cert.display()),
            };
            Error::config("tls_key", format!("{}: {why}", key.display()))
        })?;
    Ok(Identity(Arc::new(config)))
}

/// What bounds the connections TLS holds before tiny_http sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlsLimits {
    /// Longest a handshake may take (the server's header timeout).
    pub(crate) handshake_timeout: Duration,
    /// Most client connections at once; beyond it new ones are closed.
    pub(crate) max_connections: usize,
}

/// The TLS side of a server: the acceptor thread on the public listener and
/// the relay threads, all joined by [`TlsFront::stop`].
pub(crate) struct TlsFront {
    shared: Arc<Shared>,
    stop_sender: UnixStream,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    /// Readable once the server stops (a byte is written to its pair and
    /// never read): wakes every relay's poll at once.
    stop_signal: UnixStream,
    /// Relays running.
    open: AtomicUsize,
    relays: Mutex<Vec<JoinHandle<()>>>,
    /// Whether the acceptor still takes connections.
    accepting: AtomicBool,
}

impl TlsFront {
    /// Accepts TLS connections on `public` and relays each, once its
    /// handshake is done, to tiny_http's listener at `inner`.
    pub(crate) fn start(
        public: TcpListener,
        inner: SocketAddr,
        identity: Identity,
        limits: TlsLimits,
        name: String,
    ) -> io::Result<TlsFront> {
        // Non-blocking, so that the acceptor waits in poll(2) with a tick
        // and sees a stop.
        public.set_nonblocking(true)?;
        let (stop_sender, stop_signal) = UnixStream::pair()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            stop_signal,
            open: AtomicUsize::new(0),
            relays: Mutex::new(Vec::new()),
            accepting: AtomicBool::new(true),
        });
        let s = shared.clone();
        let relay_name = format!("{name}c");
        let acceptor = thread::Builder::new().name(name).spawn(move || {
            accept_loop(&s, &public, inner, &identity, limits, &relay_name);
        })?;
        Ok(TlsFront {
            shared,
            stop_sender,
            acceptor: Some(acceptor),
        })
    }

    /// Stops accepting: the public listener is closed once the acceptor
    /// has seen it (within a tick); relays go on.
    pub(crate) fn close(&mut self) {
        self.shared.accepting.store(false, Ordering::Release);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }

    /// Stops accepting and ends every relay (within a tick), joining all.
    /// True when a thread had panicked.
    pub(crate) fn stop(&mut self) -> bool {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.accepting.store(false, Ordering::Release);
        let _ = (&self.stop_sender).write_all(&[1]);
        let mut panicked = false;
        if let Some(a) = self.acceptor.take() {
            panicked |= a.join().is_err();
        }
        // No relay is added once the acceptor has ended.
        for r in std::mem::take(&mut *self.shared.relays.lock()) {
            panicked |= r.join().is_err();
        }
        panicked
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    s: &Arc<Shared>,
    public: &TcpListener,
    inner: SocketAddr,
    identity: &Identity,
    limits: TlsLimits,
    relay_name: &str,
) {
    while s.accepting.load(Ordering::Acquire) {
        if !wait_readable(public.as_raw_fd(), TICK) {
            continue;
        }
        let (stream, peer) = match public.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Descriptors or memory short: the connection stays in the
                // backlog; never give the listener up.
                log::warn!("accepting a TLS connection failed: {e}; retrying");
                thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        s.relays.lock().retain(|r| !r.is_finished());
        if s.open.load(Ordering::Acquire) >= limits.max_connections {
            log::debug!("closed the TLS connection from {peer}: too many connections");
            continue; // dropped: closed at once
        }
        s.open.fetch_add(1, Ordering::AcqRel);
        let shared = s.clone();
        let cfg = identity.0.clone();
        let spawned = thread::Builder::new()
            .name(relay_name.to_string())
            .spawn(move || {
                let _open = OpenGuard(&shared);
                relay(&shared, stream, peer, inner, cfg, limits.handshake_timeout);
            });
        match spawned {
            Ok(h) => s.relays.lock().push(h),
            Err(e) => {
                s.open.fetch_sub(1, Ordering::AcqRel);
                log::warn!("closed the TLS connection from {peer}: no thread for it: {e}");
            }
        }
    }
}

/// Counts a relay as open for as long as it runs, panics included.
struct OpenGuard<'a>(&'a Shared);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits up to `timeout` for `fd` to be readable (or closed).
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut p = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    poll(&mut p, Some(timeout)) > 0
}

/// poll(2) for up to `timeout` (`None`: until a socket is ready).
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> i32 {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: `fds` is a valid array of pollfd for its length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) }
}

/// One client connection: the handshake within `handshake_timeout`, then
/// bytes both ways until either side closes or the server stops.
fn relay(
    s: &Shared,
    mut public: TcpStream,
    peer: SocketAddr,
    inner_addr: SocketAddr,
    cfg: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
) {
    let Ok(mut tls) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    if public.set_nonblocking(true).is_err() {
        return;
    }
    let handshake_deadline = Instant::now() + handshake_timeout;
    let mut inner: Option<TcpStream> = None;
    // Plaintext from the client not yet written to tiny_http.
    let mut to_inner: Vec<u8> = Vec::new();
    let mut client_done = false;
    let mut inner_write_shut = false;
    let mut server_done = false;
    let mut buf = vec![0u8; 16 << 10];
    // Since when encrypted bytes wait for the client to read them.
    let mut stalled_since: Option<Instant> = None;
    loop {
        if s.stopping.load(Ordering::Acquire) {
            break;
        }
        if stalled_since.is_some_and(|t| t.elapsed() >= WRITE_STALL) {
            log::debug!("closed the TLS connection from {peer}: it reads nothing");
            break;
        }
        if tls.is_handshaking() {
            if Instant::now() >= handshake_deadline {
                log::debug!("closed the TLS connection from {peer}: no handshake in time");
                break;
            }
        } else if inner.is_none() {
            // TCP_NODELAY as on every socket of the server: a request is
            // written in pieces as TLS records decrypt.
            match TcpStream::connect_timeout(&inner_addr, INNER_CONNECT)
                .and_then(|c| c.set_nodelay(true).map(|()| c))
                .and_then(|c| c.set_nonblocking(true).map(|()| c))
            {
                Ok(c) => {
                    if let Ok(local) = c.local_addr() {
                        log::debug!("TLS connection from {peer} relayed from {local}");
                    }
                    inner = Some(c);
                }
                Err(e) => {
                    log::warn!("relaying the TLS connection from {peer} failed: {e}");
                    break;
                }
            }
        }
        let mut want = [0 as libc::c_short; 2];
        if !client_done && to_inner.len() < MAX_PENDING {
            want[0] |= libc::POLLIN;
        }
        if tls.wants_write() {
            want[0] |= libc::POLLOUT;
        }
        // tiny_http's answers are read only once what went before has
        // reached the client's socket: a client that does not read holds
        // tiny_http's write, which the guard then cuts.
        if inner.is_some() && !server_done && !tls.is_handshaking() && !tls.wants_write() {
            want[1] |= libc::POLLIN;
        }
        if inner.is_some() && !to_inner.is_empty() {
            want[1] |= libc::POLLOUT;
        }
        // A socket polled for nothing is left out: its hang-up or error
        // would otherwise wake poll at once, again and again.
        let fd_of = |w: libc::c_short, fd: Option<i32>| if w == 0 { -1 } else { fd.unwrap_or(-1) };
        let mut fds = [
            libc::pollfd {
                fd: fd_of(want[0], Some(public.as_raw_fd())),
                events: want[0],
                revents: 0,
            },
            libc::pollfd {
                fd: fd_of(want[1], inner.as_ref().map(|c| c.as_raw_fd())),
                events: want[1],
                revents: 0,
            },
            libc::pollfd {
                fd: s.stop_signal.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Past the handshake a relay waits for its sockets as long as they
        // are quiet: the guard closes an idle connection's loopback side.
        let timeout = if tls.is_handshaking() {
            Some(handshake_deadline.saturating_duration_since(Instant::now()))
        } else {
            stalled_since.map(|t| (t + WRITE_STALL).saturating_duration_since(Instant::now()))
        };
        if poll(&mut fds, timeout) < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
            continue;
        }
        let ready = |i: usize, ev: libc::c_short| {
            fds[i].revents & (ev | libc::POLLHUP | libc::POLLERR) != 0
        };
        // The client's bytes: TLS in, plaintext out to tiny_http.
        if fds[0].events & libc::POLLIN != 0 && ready(0, libc::POLLIN) {
            match tls.read_tls(&mut public) {
                // End of stream, or a close_notify (also during the
                // handshake: rustls 0.23 returns here, where 0.20 looped).
                Ok(0) => client_done = true,
                Ok(_) => match tls.process_new_packets() {
                    Ok(_) => loop {
                        match tls.reader().read(&mut buf) {
                            Ok(0) => {
                                client_done = true;
                                break;
                            }
                            Ok(n) => to_inner.extend_from_slice(&buf[..n]),
                            Err(_) => break, // no more plaintext for now
                        }
                    },
                    Err(e) => {
                        log::debug!("TLS from {peer}: {e}; closing");
                        // The alert that says why, if the socket takes it.
                        let _ = tls.write_tls(&mut public);
                        break;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if let Some(c) = inner.as_mut() {
            if !to_inner.is_empty() {
                match c.write(&to_inner) {
                    Ok(n) => {
                        to_inner.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            if client_done && to_inner.is_empty() && !inner_write_shut {
                // tiny_http sees the client's close (a parked watcher whose
                // client left is then released by the guard).
                let _ = c.shutdown(Shutdown::Write);
                inner_write_shut = true;
            }
            if fds[1].events & libc::POLLIN != 0 && ready(1, libc::POLLIN) {
                match c.read(&mut buf) {
                    Ok(0) => {
                        server_done = true;
                        tls.send_close_notify();
                    }
                    Ok(n) => {
                        if tls.writer().write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        // Reset by the guard or tiny_http: nothing more.
                        server_done = true;
                        tls.send_close_notify();
                    }
                }
            }
        } else if client_done {
            break; // closed before the handshake ended
        }
        while tls.wants_write() {
            match tls.write_tls(&mut public) {
                Ok(_) => stalled_since = None,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        if tls.wants_write() {
            stalled_since.get_or_insert_with(Instant::now);
        }
        if server_done && !tls.wants_write() {
            break;
        }
        if client_done && inner.is_none() {
            break;
        }
    }
    let _ = public.shutdown(Shutdown::Both);
    if let Some(c) = inner {
        let _ = c.shutdown(Shutdown::Both);
    }
}
