//! The connection guard: a thread that looks at every open connection 25
//! times a second (its unread bytes; its TCP statistics 4 times a second)
//! and closes or frees the ones tiny_http would leave hanging (CRATE-NOTES
//! §0, §1.8):
//!
//! - starved: a request waits unread: tiny_http's thread pool lost
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
//!   a connection is one socket, however many descriptors tiny_http holds
//!   of it;
//! - not reading: an answer has been in writing for `WRITE_LIMIT` (its
//!   client does not read it); the connection is cut, which frees the
//!   thread writing it;
//! - departed: the client of a parked long-poll closed its side; the
//!   long-poll is answered (and so forgotten) instead of holding its
//!   descriptors until its wait ends;
//! - a dead accept thread: tiny_http no longer holds a descriptor of the
//!   listening socket (its accept thread closes it when it ends, on an
//!   error or a panic); the front is rebuilt;
//! - a busy pool: jobs have waited with every thread of the pool held by
//!   slow clients; the pool gets one more thread.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::conns::{self, Conn};
use crate::server::worker::{self, Ctx, MAX_HEAD_BYTES};
/// Shortest time between two passes; longer when a pass itself is slow.
const TICK: Duration = Duration::from_millis(40);
/// Every how many passes the guard reads TCP statistics (about 4 a second).
const FULL_EVERY: u64 = 6;
/// Every how many passes every descriptor is identified again (about 1 s):
/// between two, a number tiny_http closed and the process reused for a new
/// connection still reads as the old one (see `conns.rs`).
const RELINK_EVERY: u64 = 25;
/// Longest an answer may take to write before its connection is cut: a
/// client that reads nothing for this long is not reading.
const WRITE_LIMIT: Duration = Duration::from_secs(10);
/// Longest a pass spends kicking.
const KICK_BUDGET: Duration = Duration::from_millis(200);
/// How long jobs may wait with every pool thread busy before the pool
/// grows by a thread.
const POOL_STUCK: Duration = Duration::from_millis(50);

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
    /// Not yet seen by a full pass.
    fresh: bool,
}

pub(crate) fn start(
    ctx: Arc<Ctx>,
    cfg: GuardConfig,
    name: String,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(name)
        .spawn(move || run(&ctx, &cfg))
}

fn run(ctx: &Arc<Ctx>, cfg: &GuardConfig) {
    let front = &*ctx.front;
    let counters = &ctx.metrics.counters;
    let mut tracks: HashMap<u64, Track> = HashMap::new();
    let mut active: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut active_since_full: HashMap<SocketAddr, Instant> = HashMap::new();
    let mut pass: u64 = 0;
    let mut not_accepting = 0u32;
    let kick_to = kick_addr(front.local);
    let mut tick = TICK;
    while !front.wait_stop(tick) {
        let started = Instant::now();

        worker::rebuild(ctx);
        ctx.pool.relieve(POOL_STUCK);
        cut_unread_answers(ctx, counters);
        ctx.refusals.flush();

        // Quick passes look for starved requests only; every FULL_EVERY-th
        // pass also reads each connection's TCP statistics for the idle,
        // slow, oversized and excess checks, which need no finer timing.
        let full = pass.is_multiple_of(FULL_EVERY);
        pass += 1;
        active.clear();
        front.take_activity(&mut active);
        active_since_full.extend(active.iter().map(|(p, at)| (*p, *at)));
        // Every descriptor's link is read again only every few seconds,
        // which corrects a descriptor number reused between two listings.
        let mut list = front.scan(pass % RELINK_EVERY == 1);
        // tiny_http holds two descriptors of each connection: one socket,
        // one connection.
        let mut seen = HashSet::with_capacity(list.len());
        list.retain(|c| seen.insert(c.inode));
        counters
            .open_connections
            .store(list.len() as u64, Ordering::Relaxed);
        // A dead accept thread: two passes in a row, so that a rebuild in
        // progress is not mistaken for one.
        if front.accepting() {
            not_accepting = 0;
        } else {
            not_accepting += 1;
            if not_accepting >= 2 {
                front.want_rebuild(&front.current(), "its accept thread ended");
                not_accepting = 0;
            }
        }
        let mut kicks = 0usize;
        for c in &list {
            let t = tracks.entry(c.inode).or_insert_with(|| Track {
                first_seen: started,
                base: 0,
                partial_since: None,
                waiting_passes: 0,
                closed: false,
                fresh: true,
            });
            if t.closed {
                continue;
            }
            // Bytes behind a request in service wait for it, not for a
            // pool thread of tiny_http's (after `Connection: close`, for
            // good): only a connection with nothing in service can starve.
            if active.contains_key(&c.peer) || ctx.lanes.is_busy(&c.peer) {
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
            if st.peer_closed && ctx.watchers.is_parked(&c.peer) {
                counters.closed_departed.fetch_add(1, Ordering::Relaxed);
                log::debug!("the client of a parked long-poll, {}, left", c.peer);
                worker::release(ctx, c.peer);
                continue;
            }
            let fresh = std::mem::take(&mut t.fresh);
            if let Some(&at) = active_since_full.get(&c.peer) {
                t.base = st.received;
                // Bytes that came after the last request was taken are the
                // start of the next head (to the kernel's millisecond).
                let last_data = started.checked_sub(Duration::from_millis(st.idle_ms.into()));
                t.partial_since = last_data.filter(|d| *d > at + Duration::from_millis(5));
                continue;
            }
            // First met with its request already taken (in service, or a
            // parked long-poll): the bytes so far were that request's, not
            // the start of a head. A descriptor is linked to its socket
            // only every RELINK_EVERY passes, so a new connection can be
            // met well after its request was taken and its activity seen.
            if fresh && (ctx.lanes.is_busy(&c.peer) || ctx.watchers.is_parked(&c.peer)) {
                t.base = st.received;
                continue;
            }
            // Fewer bytes than before: the number named another socket
            // when it was read (see conns.rs); start over from here.
            if st.received < t.base {
                t.base = st.received;
                t.partial_since = None;
            }
            if st.received > t.base {
                t.partial_since.get_or_insert(started);
            }
            if st.received - t.base > MAX_HEAD_BYTES {
                t.closed = close(ctx, c, 431, "request head larger than 64 KiB");
                counters.closed_oversized.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if t.partial_since
                .is_some_and(|p| started - p >= cfg.header_timeout)
            {
                t.closed = close(
                    ctx,
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
                && !ctx.watchers.is_parked(&c.peer)
                && !ctx.writing.lock().contains_key(&c.peer)
            {
                t.closed = close(ctx, c, 0, "");
                counters.closed_idle.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracks.retain(|inode, _| seen.contains(inode));

        if full {
            active_since_full.clear();
            let open: HashSet<SocketAddr> = list.iter().map(|c| c.peer).collect();
            ctx.lanes.forget_closed(|p| open.contains(p));
            let open: Vec<&Conn> = list
                .iter()
                .filter(|c| tracks.get(&c.inode).is_some_and(|t| !t.closed))
                .collect();
            if open.len() > cfg.max_connections {
                let excess = open.len() - cfg.max_connections;
                let mut newest = open;
                newest.sort_by_key(|c| std::cmp::Reverse(tracks[&c.inode].first_seen));
                for c in newest.into_iter().take(excess) {
                    let closed = close(ctx, c, 503, "too many connections; retry later");
                    counters.closed_excess.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = tracks.get_mut(&c.inode) {
                        t.closed = closed;
                    }
                }
            }
        }

        // A bounded share of the pass: a full backlog makes each connect
        // wait, and the guard has other duties.
        let budget = Instant::now() + KICK_BUDGET;
        for _ in 0..kicks.min(256) {
            if front.stopping() || Instant::now() >= budget {
                break;
            }
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

/// Cuts the connections whose answer has been in writing too long: the
/// write fails at once, and the thread that was blocked in it is free.
fn cut_unread_answers(ctx: &Arc<Ctx>, counters: &crate::server::metrics::Counters) {
    let stuck: Vec<SocketAddr> = ctx
        .writing
        .lock()
        .iter()
        .filter(|(_, since)| since.elapsed() >= WRITE_LIMIT)
        .map(|(peer, _)| *peer)
        .collect();
    for peer in stuck {
        if worker::cut(ctx, peer, None) {
            counters.closed_unread.fetch_add(1, Ordering::Relaxed);
            log::debug!("closed the connection from {peer}: it does not read its answer");
        }
        ctx.writing.lock().remove(&peer);
    }
}

/// Shuts a connection down, first writing a last answer with `status`
/// (none for 0: an idle connection owes no answer). True when closed.
fn close(ctx: &Arc<Ctx>, c: &Conn, status: u16, reason: &str) -> bool {
    let last = (status != 0).then_some((status, reason));
    let closed = worker::cut_conn(ctx, c.peer, Some(*c), last);
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
