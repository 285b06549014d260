//! The connection guard: a thread that looks at every open connection 25
//! times a second (its unread bytes; its TCP statistics 4 times a second)
//! and closes or frees the ones tiny_http would leave hanging (CRATE-NOTES
//! §0, §1.8):
//!
//! - starved: a request waits unread because tiny_http's thread pool lost
//!   the wake-up meant for it (a race during bursts of new connections); a
//!   connection to ourselves that closes at once ("kick") lets a pool thread
//!   pick it up. One kick frees one connection, so it kicks once per
//!   connection seen waiting;
//! - idle: nothing arrived for the idle timeout (tiny_http never closes a
//!   kept-alive connection, and each holds a thread);
//! - slow: a request head started arriving but is not complete after the
//!   header timeout (answered 408);
//! - oversized: more than 64 KiB arrived without completing a request head
//!   (tiny_http buffers header lines without limit; answered 431);
//! - excess: more connections than allowed (the newest are answered 503);
//! - a dead accept thread: connections wait in the listener's queue and
//!   nobody takes them; the front is rebuilt.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::conns::{self, Conn, Scanner};
use super::front::Front;
use super::metrics::{Counters, Metrics};
use super::watch::Watchers;

/// Most bytes a request head may take (tiny_http has no limit).
pub(crate) const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// Shortest time between two passes; longer when a pass itself is slow.
const TICK: Duration = Duration::from_millis(40);
/// Every how many passes the guard reads TCP statistics (about 4 a second).
const FULL_EVERY: u64 = 6;
/// Every how many passes every descriptor is identified again (about 5 s).
const RELINK_EVERY: u64 = 120;
/// How long connections may wait in the accept queue untaken before the
/// accept thread is taken for dead.
const STUCK_ACCEPT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub(crate) struct GuardConfig {
    pub(crate) idle_timeout: Duration,
    pub(crate) header_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// What the guard knows of one connection between passes.
struct Track {
    first_seen: Instant,
    /// Bytes received when the last complete request was seen.
    base: u64,
    /// Since when bytes of an incomplete request head have been arriving.
    partial_since: Option<Instant>,
    /// Consecutive passes that saw unread bytes and no request.
    waiting_passes: u32,
    /// Shut down by the guard; tiny_http has not let go of it yet.
    closed: bool,
}

pub(crate) fn start(
    front: Arc<Front>,
    watchers: Arc<Watchers>,
    metrics: Arc<Metrics>,
    cfg: GuardConfig,
    name: String,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name)
        .spawn(move || run(&front, &watchers, &metrics.counters, &cfg))
}

fn run(front: &Front, watchers: &Watchers, counters: &Counters, cfg: &GuardConfig) {
    let mut scanner = Scanner::new(front.local);
    let mut tracks: HashMap<u64, Track> = HashMap::new();
    let mut active: HashSet<SocketAddr> = HashSet::new();
    let mut active_since_full: HashSet<SocketAddr> = HashSet::new();
    let mut pass: u64 = 0;
    let mut queue_since: Option<Instant> = None;
    let kick_to = kick_addr(front.local);
    let mut tick = TICK;
    while !front.wait_stop(tick) {
        let started = Instant::now();

        // A dead accept thread leaves connections in the listen queue.
        match conns::listen_queue(front.spare()) {
            Some(n) if n > 0 => {
                let since = *queue_since.get_or_insert(started);
                if started - since >= STUCK_ACCEPT {
                    front.rebuild(&front.current(), "connections are not being accepted");
                    queue_since = None;
                }
            }
            _ => queue_since = None,
        }

        // Quick passes look for starved requests only; every FULL_EVERY-th
        // pass also reads each connection's TCP statistics for the idle,
        // slow, oversized and excess checks, which need no finer timing.
        let full = pass.is_multiple_of(FULL_EVERY);
        pass += 1;
        active.clear();
        front.take_activity(&mut active);
        active_since_full.extend(active.iter().copied());
        // Every descriptor's link is read again only every few seconds,
        // which corrects a descriptor number reused between two listings.
        let list = scanner.scan(pass % RELINK_EVERY == 1);
        let mut kicks = 0usize;
        let mut seen = HashSet::with_capacity(list.len());
        for c in &list {
            seen.insert(c.inode);
            let t = tracks.entry(c.inode).or_insert_with(|| Track {
                first_seen: started,
                base: 0,
                partial_since: None,
                waiting_passes: 0,
                closed: false,
            });
            if t.closed {
                continue;
            }
            if active.contains(&c.peer) {
                t.waiting_passes = 0;
            } else if conns::unread(c) > 0 {
                t.waiting_passes += 1;
                if t.waiting_passes >= 2 {
                    kicks += 1;
                    t.waiting_passes = 0;
                }
            } else {
                t.waiting_passes = 0;
            }
            if !full {
                continue;
            }
            let Some(st) = conns::stats(c) else { continue };
            if active_since_full.contains(&c.peer) {
                t.base = st.received;
                t.partial_since = None;
                continue;
            }
            if st.received > t.base {
                t.partial_since.get_or_insert(started);
            }
            if st.received - t.base > MAX_HEAD_BYTES {
                t.closed = close(front, c, 431, "request head larger than 64 KiB");
                counters.closed_oversized.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if t.partial_since
                .is_some_and(|p| started - p >= cfg.header_timeout)
            {
                t.closed = close(
                    front,
                    c,
                    408,
                    "request head not complete within the header timeout",
                );
                counters.closed_slow.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // A parked long-poll is waiting for us, not idle.
            if t.partial_since.is_none()
                && Duration::from_millis(st.idle_ms.into()) >= cfg.idle_timeout
                && !watchers.is_parked(&c.peer)
            {
                t.closed = close(front, c, 0, "");
                counters.closed_idle.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracks.retain(|inode, _| seen.contains(inode));

        if full {
            active_since_full.clear();
            let open: Vec<&Conn> = list
                .iter()
                .filter(|c| tracks.get(&c.inode).is_some_and(|t| !t.closed))
                .collect();
            if open.len() > cfg.max_connections {
                let excess = open.len() - cfg.max_connections;
                let mut newest = open;
                newest.sort_by_key(|c| std::cmp::Reverse(tracks[&c.inode].first_seen));
                for c in newest.into_iter().take(excess) {
                    let closed = close(front, c, 503, "too many connections; retry later");
                    counters.closed_excess.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = tracks.get_mut(&c.inode) {
                        t.closed = closed;
                    }
                }
            }
        }

        for _ in 0..kicks.min(1024) {
            // Connect and close at once: the pool thread that runs this
            // connection's task ends it and takes the next queued one.
            let _ = TcpStream::connect_timeout(&kick_to, Duration::from_millis(100));
        }
        counters.kicks.fetch_add(kicks as u64, Ordering::Relaxed);
        if kicks > 0 {
            log::debug!("kicked {kicks} starved connections");
        }
        tick = TICK.max(started.elapsed() * 3);
    }
}

/// Shuts a connection down, first writing a last answer with `status`
/// (none for 0: an idle connection owes no answer). True when closed.
fn close(front: &Front, c: &Conn, status: u16, reason: &str) -> bool {
    let answer = match status {
        0 => String::new(),
        _ => {
            let text = match status {
                408 => "Request Timeout",
                431 => "Request Header Fields Too Large",
                _ => "Service Unavailable",
            };
            let body = format!("{reason}\n");
            format!(
                "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
    };
    let closed = conns::send_and_close(c, front.local, answer.as_bytes());
    if closed {
        log::debug!(
            "closed the connection from {}: {}",
            c.peer,
            if status == 0 { "idle" } else { reason }
        );
    }
    closed
}

/// Where to connect to reach our own listener (an unspecified bind address
/// is reached through loopback).
pub(crate) fn kick_addr(local: SocketAddr) -> SocketAddr {
    let mut a = local;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}
