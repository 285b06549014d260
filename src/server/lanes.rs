//! One connection's requests, one after another, in the order they were
//! sent.
//!
//! Why: tiny_http reads a connection's next request as soon as the last one
//! has no body left to read, and queues both for whichever thread is free,
//! so two pipelined requests of one connection would run at once (a POST
//! and a DELETE of the same address could be applied in either order). And
//! it writes a connection's answers in order, so an answer waits for every
//! earlier one: a request behind a parked long-poll would hold its thread
//! until the long-poll ends. Go's net/http, which the seed uses, serves a
//! connection's requests one at a time; so does this.
//!
//! A connection has a lane while one of its requests is in service
//! (routed, being written, or parked as a long-poll); requests that arrive
//! meanwhile wait in the lane and run, in order, when the one in service is
//! answered. A parked long-poll with a request behind it is answered at
//! once (a long-poll may end before its wait), which lets the lane go on.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::http::Exchange;

/// Most requests one connection may have waiting behind the one in
/// service; a client pipelining more is not reading its answers, and its
/// connection is closed instead of holding its requests in memory.
pub(crate) const MAX_PIPELINED: usize = 1024;

/// How long a closed connection's lane outlives the connection: requests
/// tiny_http had read before the close may still be in its queue.
const TOMBSTONE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Lane {
    /// One of the connection's requests is in service.
    busy: bool,
    waiting: VecDeque<Exchange>,
    parked: bool,
    /// Since when the connection is being closed, and its socket's inode
    /// when known; its requests are dropped.
    closing: Option<(Instant, Option<u64>)>,
}

/// What to do with a request that just arrived.
pub(crate) enum Arrival {
    /// Its connection was idle: run it now.
    Run(Exchange),
    /// It waits behind its connection's request in service; when that one
    /// is a parked long-poll, it should be answered now.
    Queued { release_parked: bool },
    /// It comes from the peer of a connection that was closed: whether it
    /// is that connection (drop its requests) or a new one from the same
    /// address (serve it) must be checked; it waits in the lane meanwhile.
    Verify,
    /// Its connection pipelined too much: shut the connection down (its
    /// requests are dropped when the one in service ends).
    Overflow,
}

/// What a connection does once its request in service is answered.
pub(crate) enum Next {
    Run(Exchange),
    Idle,
    /// The connection is being closed: drop these, in order.
    Discard(Vec<Exchange>),
}

#[derive(Default)]
pub(crate) struct Lanes {
    lanes: Mutex<HashMap<SocketAddr, Lane>>,
}

impl Lanes {
    /// Places a request that tiny_http has just handed over. Must be called
    /// in the order tiny_http hands requests over (one intake thread per
    /// tiny_http server, and a connection belongs to one server).
    pub(crate) fn arrive(&self, rq: Exchange) -> Arrival {
        let Some(peer) = rq.peer() else {
            return Arrival::Run(rq);
        };
        let mut lanes = self.lanes.lock();
        let lane = lanes.entry(peer).or_default();
        if !lane.busy && lane.closing.is_some() {
            lane.busy = true;
            lane.waiting.push_back(rq);
            return Arrival::Verify;
        }
        if !lane.busy {
            lane.busy = true;
            return Arrival::Run(rq);
        }
        // Dropping a request writes an answer after every earlier one, so
        // even a request to discard waits its turn behind the one in service.
        lane.waiting.push_back(rq);
        if lane.closing.is_none() && lane.waiting.len() > MAX_PIPELINED {
            lane.closing = Some((Instant::now(), None));
            return Arrival::Overflow;
        }
        Arrival::Queued {
            release_parked: lane.parked,
        }
    }

    /// The request in service on `peer`'s connection is being parked.
    /// False when requests wait behind it: answer it now instead.
    pub(crate) fn park(&self, peer: SocketAddr) -> bool {
        let mut lanes = self.lanes.lock();
        match lanes.get_mut(&peer) {
            Some(lane) if lane.waiting.is_empty() && lane.closing.is_none() => {
                lane.parked = true;
                true
            }
            _ => false,
        }
    }

    /// Whether requests wait behind `peer`'s request in service.
    pub(crate) fn has_waiting(&self, peer: SocketAddr) -> bool {
        self.lanes
            .lock()
            .get(&peer)
            .is_some_and(|l| !l.waiting.is_empty() || l.closing.is_some())
    }

    /// From now on the requests of `peer`'s connection (the socket
    /// `inode`, when known) are dropped unanswered: it has been shut down.
    pub(crate) fn close(&self, peer: SocketAddr, inode: Option<u64>) {
        let mut lanes = self.lanes.lock();
        let lane = lanes.entry(peer).or_default();
        lane.closing.get_or_insert((Instant::now(), inode));
    }

    /// When the connection on `peer` was closed, and its socket if known.
    pub(crate) fn closed(&self, peer: SocketAddr) -> Option<(Instant, Option<u64>)> {
        self.lanes.lock().get(&peer)?.closing
    }

    /// After [`Arrival::Verify`]: the requests waiting come from a new
    /// connection (`same` false), which gets a lane of its own, or from the
    /// closed one, whose requests are dropped.
    pub(crate) fn verified(&self, peer: SocketAddr, same: bool) -> Next {
        let mut lanes = self.lanes.lock();
        let Some(lane) = lanes.get_mut(&peer) else {
            return Next::Idle;
        };
        if same {
            lane.busy = false;
            return Next::Discard(std::mem::take(&mut lane.waiting).into());
        }
        lane.closing = None;
        match lane.waiting.pop_front() {
            Some(rq) => Next::Run(rq),
            None => {
                lanes.remove(&peer);
                Next::Idle
            }
        }
    }

    /// Whether one of `peer`'s requests is in service.
    pub(crate) fn is_busy(&self, peer: &SocketAddr) -> bool {
        self.lanes.lock().get(peer).is_some_and(|l| l.busy)
    }

    /// `peer`'s request in service has been answered.
    pub(crate) fn done(&self, peer: SocketAddr) -> Next {
        let mut lanes = self.lanes.lock();
        let Some(lane) = lanes.get_mut(&peer) else {
            return Next::Idle;
        };
        lane.parked = false;
        if lane.closing.is_some() {
            lane.busy = false;
            return Next::Discard(std::mem::take(&mut lane.waiting).into());
        }
        match lane.waiting.pop_front() {
            Some(rq) => Next::Run(rq),
            None => {
                lanes.remove(&peer);
                Next::Idle
            }
        }
    }

    /// Forgets closed connections that are gone (`open` says which peers
    /// still have a connection) and were closed a while ago.
    pub(crate) fn forget_closed(&self, open: impl Fn(&SocketAddr) -> bool) {
        self.lanes.lock().retain(|peer, lane| {
            lane.busy
                || lane
                    .closing
                    .is_none_or(|(at, _)| at.elapsed() < TOMBSTONE || open(peer))
        });
    }
}
