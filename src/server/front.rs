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

/// Most peers remembered between two guard passes; beyond it activity is
/// dropped (the guard then only misjudges a slow sender).
const MAX_ACTIVITY: usize = 1 << 16;
/// Longest wait between two rebuild attempts while descriptors are short.
const MAX_REBUILD_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Front {
    pub(crate) local: SocketAddr,
    current: Mutex<Arc<tiny_http::Server>>,
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
    last_rebuild: Mutex<Option<(Instant, Duration)>>,
    /// Peers whose requests arrived since the guard last looked: a
    /// connection with activity is not idle, slow or starved.
    activity: Mutex<Vec<SocketAddr>>,
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
            last_rebuild: Mutex::new(None),
            activity: Mutex::new(Vec::new()),
            scanner: Mutex::new(Scanner::new(local)),
        })
    }

    pub(crate) fn current(&self) -> Arc<tiny_http::Server> {
        self.current.lock().clone()
    }

    pub(crate) fn is_current(&self, http: &Arc<tiny_http::Server>) -> bool {
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
                v.push(*peer);
            }
        }
    }

    pub(crate) fn take_activity(&self, into: &mut std::collections::HashSet<SocketAddr>) {
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

    /// Writes `bytes` on `peer`'s connection without blocking and shuts it
    /// down; false when no such connection is open.
    pub(crate) fn close(&self, peer: SocketAddr, bytes: &[u8]) -> bool {
        let found = self.scanner.lock().find(peer);
        found.is_some_and(|c| conns::send_and_close(&c, self.local, bytes))
    }

    /// Waits up to `d` unless the front is stopping; true when stopping.
    pub(crate) fn wait_stop(&self, d: Duration) -> bool {
        let mut g = self.stop_lock.lock();
        if !self.stopping() {
            self.stop_wake.wait_for(&mut g, d);
        }
        self.stopping()
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

    /// Replaces `failed` (if it is still the current server) with a new
    /// server on the same listening socket; the new server, for its intake.
    pub(crate) fn rebuild(
        &self,
        failed: &Arc<tiny_http::Server>,
        why: &str,
    ) -> Option<Arc<tiny_http::Server>> {
        let mut current = self.current.lock();
        if !Arc::ptr_eq(&current, failed) {
            return None; // another thread rebuilt it already
        }
        log::error!(
            "regcenter stopped accepting connections on {} ({why}); rebuilding the HTTP server on the same port",
            self.local
        );
        // Repeated failures (descriptors still short) back off up to 1 s.
        let mut wait = {
            let last = self.last_rebuild.lock();
            match *last {
                Some((at, w)) if at.elapsed() < MAX_REBUILD_WAIT * 2 => {
                    (w * 2).min(MAX_REBUILD_WAIT)
                }
                _ => Duration::from_millis(10),
            }
        };
        let server = loop {
            if self.wait_stop(wait) {
                return None;
            }
            match self.spare.try_clone().and_then(|l| {
                tiny_http::Server::from_listener(l, None).map_err(std::io::Error::other)
            }) {
                Ok(s) => break Arc::new(s),
                Err(e) => {
                    log::warn!(
                        "rebuilding the HTTP server on {} failed: {e}; retrying",
                        self.local
                    );
                    wait = (wait * 2).min(MAX_REBUILD_WAIT);
                }
            }
        };
        *self.last_rebuild.lock() = Some((Instant::now(), wait));
        let old = std::mem::replace(&mut *current, server.clone());
        drop(current);
        {
            let mut replaced = self.replaced.lock();
            replaced.retain(|w| w.strong_count() > 0);
            replaced.push(Arc::downgrade(&old));
        }
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        log::info!("regcenter accepts connections on {} again", self.local);
        Some(server)
    }
}
