//! The HTTP front: the current tiny_http server, a spare of its listener,
//! the rebuild that replaces a server whose accept thread died, and the
//! view of open connections that lets the server close one.
//!
//! Why: one accept error (EMFILE, ECONNABORTED) ends tiny_http's accept
//! thread for good, and under descriptor exhaustion it can panic instead
//! (CRATE-NOTES §1.8b). The spare keeps the listening socket open, so the
//! port keeps queueing connections, and a new server built on a clone of it
//! serves them once descriptors are free again. The failed server's
//! connections keep working: only its accept thread is gone, and its intake
//! keeps reading them (`worker.rs`).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conns::{self, Scanner};
use super::tiny::Exchange;

/// Most peers remembered between two guard passes; beyond it activity is
/// dropped (the guard then only misjudges a slow sender).
const MAX_ACTIVITY: usize = 1 << 16;
/// Longest wait between two rebuild attempts while descriptors are short.
const MAX_REBUILD_WAIT: Duration = Duration::from_secs(1);

/// One tiny_http server; the front keeps the current one and those a
/// rebuild replaced.
pub(crate) type Http = tiny_http::Server;

/// Takes the next request `http` queued, waiting up to `timeout`. `Ok(None)`
/// is a timeout or an unblock (a stop); an error with an OS code is an
/// accept error, after which `http` accepts nothing more.
pub(crate) fn recv(http: &Http, timeout: Duration) -> std::io::Result<Option<Exchange>> {
    Ok(http.recv_timeout(timeout)?.map(Exchange::new))
}

pub(crate) struct Front {
    pub(crate) local: SocketAddr,
    current: Mutex<Arc<Http>>,
    /// Servers replaced by a rebuild whose intakes still read them.
    replaced: Mutex<Vec<std::sync::Weak<tiny_http::Server>>>,
    spare: TcpListener,
    /// The listening socket's inode, to tell whether tiny_http still holds
    /// a descriptor of it (its accept thread is alive).
    listener_inode: Option<u64>,
    stopping: AtomicBool,
    /// Interrupts rebuild waits and guard passes on stop.
    stop_lock: Mutex<()>,
    stop_wake: Condvar,
    rebuilds: AtomicU64,
    rebuild: Mutex<Rebuild>,
    /// Peers whose requests arrived since the guard last looked: a
    /// connection with activity is not idle, slow or starved.
    activity: Mutex<Vec<(SocketAddr, Instant)>>,
    /// The open connections, shared by the guard and the request threads.
    scanner: Mutex<Scanner>,
}

impl Front {
    pub(crate) fn new(listener: TcpListener) -> std::io::Result<Front> {
        let local = listener.local_addr()?;
        let spare = listener.try_clone()?;
        let listener_inode = conns::inode_of_listener(&spare);
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        Ok(Front {
            local,
            current: Mutex::new(Arc::new(server)),
            replaced: Mutex::new(Vec::new()),
            spare,
            listener_inode,
            stopping: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_wake: Condvar::new(),
            rebuilds: AtomicU64::new(0),
            rebuild: Mutex::new(Rebuild::default()),
            activity: Mutex::new(Vec::new()),
            scanner: Mutex::new(Scanner::new(local)),
        })
    }

    pub(crate) fn current(&self) -> Arc<Http> {
        self.current.lock().clone()
    }

    pub(crate) fn is_current(&self, http: &Arc<Http>) -> bool {
        Arc::ptr_eq(&self.current.lock(), http)
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// How many times the server was rebuilt.
    pub(crate) fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, peer: Option<&SocketAddr>) {
        if let Some(peer) = peer {
            let mut v = self.activity.lock();
            if v.len() < MAX_ACTIVITY {
                v.push((*peer, Instant::now()));
            }
        }
    }

    /// Peers whose requests arrived since the last call, each with when its
    /// latest did.
    pub(crate) fn take_activity(&self, into: &mut std::collections::HashMap<SocketAddr, Instant>) {
        into.extend(std::mem::take(&mut *self.activity.lock()));
    }

    /// The open connections (a `full` scan reads every descriptor again).
    pub(crate) fn scan(&self, full: bool) -> Vec<conns::Conn> {
        self.scanner.lock().scan(full)
    }

    /// Whether tiny_http's accept thread still holds the listening socket,
    /// as of the last scan. It closes its descriptor when it ends, on an
    /// accept error or a panic; the spare keeps the socket itself open.
    pub(crate) fn accepting(&self) -> bool {
        match self.listener_inode {
            Some(inode) => self.scanner.lock().descriptors_of(inode) >= 2,
            None => true,
        }
    }

    /// Writes `bytes` on the listed connection `c` without blocking and
    /// shuts it down; false when `c` is gone (its number is then read
    /// again at the next scan).
    pub(crate) fn close_listed(&self, c: &conns::Conn, bytes: &[u8]) -> bool {
        let closed = conns::send_and_close(c, self.local, bytes);
        if !closed {
            self.scanner.lock().forget(c.fd);
        }
        closed
    }

    /// The connection from `peer`, if it is open.
    pub(crate) fn find(&self, peer: SocketAddr) -> Option<conns::Conn> {
        self.scanner.lock().find(peer)
    }

    /// The sockets of connections from `peer`, read afresh: a closed one
    /// and a new one from the same address can be open side by side.
    pub(crate) fn sockets_of(&self, peer: SocketAddr) -> Vec<u64> {
        self.scanner
            .lock()
            .scan(true)
            .into_iter()
            .filter(|c| c.peer == peer)
            .map(|c| c.inode)
            .collect()
    }

    /// Waits up to `d` unless the front is stopping; true when stopping.
    pub(crate) fn wait_stop(&self, d: Duration) -> bool {
        let mut g = self.stop_lock.lock();
        if !self.stopping() {
            self.stop_wake.wait_for(&mut g, d);
        }
        self.stopping()
    }

    /// Refuses new connections from now on: a stop has answered everything
    /// it will answer, and a client connecting now would wait for nothing.
    pub(crate) fn close_listener(&self) {
        let _ = socket2::SockRef::from(&self.spare).shutdown(std::net::Shutdown::Read);
    }

    /// Starts stopping: wakes waits and every intake.
    pub(crate) fn stop(&self) {
        {
            let _g = self.stop_lock.lock();
            self.stopping.store(true, Ordering::Release);
            self.stop_wake.notify_all();
        }
        self.current().unblock();
        for s in self.replaced.lock().iter().filter_map(|w| w.upgrade()) {
            s.unblock();
        }
    }

    /// Asks for `failed` to be replaced, if it is still the current server
    /// (the guard makes the attempts, so that no intake waits on them).
    pub(crate) fn want_rebuild(&self, failed: &Arc<Http>, why: &str) {
        if !self.is_current(failed) {
            return;
        }
        let mut r = self.rebuild.lock();
        if r.wanted {
            return;
        }
        r.wanted = true;
        log::error!(
            "regcenter stopped accepting connections on {} ({why}); rebuilding the HTTP server on the same port",
            self.local
        );
    }

    /// Whether a rebuild is wanted and its backoff has passed.
    pub(crate) fn rebuild_due(&self) -> bool {
        let r = self.rebuild.lock();
        r.wanted && r.next_attempt.is_none_or(|at| Instant::now() >= at)
    }

    /// One attempt at a new server on the same listening socket; the new
    /// server, for its intake, when it is built. Failures (descriptors
    /// still short) back off up to 1 s between attempts.
    pub(crate) fn try_rebuild(&self) -> Option<Arc<Http>> {
        if self.stopping() {
            return None;
        }
        // tiny_http starts its accept thread with `thread::spawn`, which
        // panics when no thread can be made.
        let spare = self.spare.try_clone();
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            spare.and_then(|l| {
                tiny_http::Server::from_listener(l, None).map_err(std::io::Error::other)
            })
        }))
        .unwrap_or_else(|_| Err(std::io::Error::other("starting its accept thread panicked")));
        let server = match built {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let mut r = self.rebuild.lock();
                r.wait = (r.wait * 2).clamp(Duration::from_millis(10), MAX_REBUILD_WAIT);
                r.next_attempt = Some(Instant::now() + r.wait);
                log::warn!(
                    "rebuilding the HTTP server on {} failed: {e}; retrying in {:?}",
                    self.local,
                    r.wait
                );
                return None;
            }
        };
        let mut current = self.current.lock();
        if self.stopping() {
            return None;
        }
        let old = std::mem::replace(&mut *current, server.clone());
        drop(current);
        {
            let mut replaced = self.replaced.lock();
            replaced.retain(|w| w.strong_count() > 0);
            replaced.push(Arc::downgrade(&old));
        }
        *self.rebuild.lock() = Rebuild::default();
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        log::info!("regcenter accepts connections on {} again", self.local);
        Some(server)
    }
}

/// Where a wanted rebuild stands.
#[derive(Default)]
struct Rebuild {
    wanted: bool,
    wait: Duration,
    next_attempt: Option<Instant>,
}
