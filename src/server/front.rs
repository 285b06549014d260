//! The HTTP front: the current tiny_http server, a spare of its listener,
//! and the rebuild that replaces a server whose accept thread died.
//!
//! Why: one accept error (EMFILE, ECONNABORTED) ends tiny_http's accept
//! thread for good, and under descriptor exhaustion it can panic instead
//! (CRATE-NOTES §1.8b). The spare keeps the listening socket open, so the
//! port keeps queueing connections, and a new server built on a clone of it
//! serves them once descriptors are free again.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::conns;

/// Most peers remembered per worker between two guard passes; beyond it
/// activity is dropped (the guard then only misjudges a slow sender).
const MAX_ACTIVITY: usize = 1 << 16;
/// Longest wait between two rebuild attempts while descriptors are short.
const MAX_REBUILD_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Front {
    pub(crate) local: SocketAddr,
    current: Mutex<Arc<tiny_http::Server>>,
    spare: TcpListener,
    workers: usize,
    stopping: AtomicBool,
    /// Interrupts rebuild waits and guard passes on stop.
    stop_lock: Mutex<()>,
    stop_wake: Condvar,
    rebuilds: AtomicU64,
    last_rebuild: Mutex<Option<(Instant, Duration)>>,
    /// Peers whose requests each worker received since the guard last
    /// looked: a connection with activity is not idle, slow or starved.
    activity: Vec<Mutex<Vec<SocketAddr>>>,
}

impl Front {
    pub(crate) fn new(listener: TcpListener, workers: usize) -> std::io::Result<Front> {
        let local = listener.local_addr()?;
        let spare = listener.try_clone()?;
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        Ok(Front {
            local,
            current: Mutex::new(Arc::new(server)),
            spare,
            workers,
            stopping: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_wake: Condvar::new(),
            rebuilds: AtomicU64::new(0),
            last_rebuild: Mutex::new(None),
            activity: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
        })
    }

    pub(crate) fn current(&self) -> Arc<tiny_http::Server> {
        self.current.lock().clone()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// How many times the server was rebuilt.
    pub(crate) fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    pub(crate) fn spare(&self) -> &TcpListener {
        &self.spare
    }

    pub(crate) fn record(&self, worker: usize, peer: Option<&SocketAddr>) {
        if let (Some(peer), Some(slot)) = (peer, self.activity.get(worker)) {
            let mut v = slot.lock();
            if v.len() < MAX_ACTIVITY {
                v.push(*peer);
            }
        }
    }

    pub(crate) fn take_activity(&self, into: &mut std::collections::HashSet<SocketAddr>) {
        for slot in &self.activity {
            into.extend(std::mem::take(&mut *slot.lock()));
        }
    }

    /// Waits up to `d` unless the front is stopping; true when stopping.
    pub(crate) fn wait_stop(&self, d: Duration) -> bool {
        let mut g = self.stop_lock.lock();
        if !self.stopping() {
            self.stop_wake.wait_for(&mut g, d);
        }
        self.stopping()
    }

    /// Starts stopping: wakes waits and every worker blocked in `recv`.
    pub(crate) fn stop(&self) {
        {
            let _g = self.stop_lock.lock();
            self.stopping.store(true, Ordering::Release);
            self.stop_wake.notify_all();
        }
        let current = self.current();
        for _ in 0..self.workers {
            current.unblock();
        }
    }

    /// Replaces `failed` (if it is still the current server) with a new
    /// server on the same listening socket. Connections the failed server
    /// had accepted are closed first: their requests would go to a queue
    /// nobody reads any more, and their clients reconnect at once.
    pub(crate) fn rebuild(&self, failed: &Arc<tiny_http::Server>, why: &str) {
        let mut current = self.current.lock();
        if !Arc::ptr_eq(&current, failed) {
            return; // another thread rebuilt it already
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
                drop(current);
                for _ in 0..self.workers {
                    failed.unblock();
                }
                return;
            }
            conns::shutdown_accepted(self.local);
            match self.spare.try_clone().and_then(|l| {
                tiny_http::Server::from_listener(l, None).map_err(std::io::Error::other)
            }) {
                Ok(s) => break s,
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
        *current = Arc::new(server);
        drop(current);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        log::info!("regcenter accepts connections on {} again", self.local);
        // Workers still blocked on the failed server move to the new one.
        for _ in 0..self.workers {
            failed.unblock();
        }
    }
}
