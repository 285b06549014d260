//! Parked long-polls: `GET …?index=N&wait=D` waits here, holding no thread,
//! until its listing changes (its service's, or with `meta.KEY=VALUE`
//! filters the filtered listing's), its wait passes, a request arrives
//! behind it on its connection, or its client leaves. This module only
//! keeps them; whoever takes one out hands it to the server's threads to
//! answer (`worker.rs`), so that no thread committing a change and no
//! timer ever writes to a watcher's socket.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::http::Exchange;
use super::route::{Filter, Format, Watch};
use crate::rand;
use crate::registry::Registry;

/// The service key of watchers that any change wakes (Consul's
/// `catalog/services`); no service can be named `*`.
pub(crate) const ANY_SERVICE: &str = "*";

/// A long-poll waiting for its answer.
pub(crate) struct Parked {
    pub(crate) rq: Exchange,
    pub(crate) service: String,
    pub(crate) format: Format,
    pub(crate) filter: Filter,
    /// The index it waits to see passed.
    index: u64,
    deadline: Instant,
    pub(crate) peer: Option<SocketAddr>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    parked: HashMap<u64, Parked>,
    by_service: HashMap<String, Vec<u64>>,
    by_deadline: BTreeSet<(Instant, u64)>,
    /// A connection has at most one parked request (`lanes.rs`).
    by_peer: HashMap<SocketAddr, u64>,
    stopping: bool,
    /// When the registry's recovery ends, if it recovers: every parked
    /// watcher is answered then, since its answer said `recovering` and
    /// its client keeps the servers from before the restart until told
    /// otherwise.
    recovery_ends: Option<Instant>,
}

impl State {
    fn take(&mut self, id: u64) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        self.by_deadline.remove(&(p.deadline, id));
        if let Some(peer) = p.peer
            && self.by_peer.get(&peer) == Some(&id)
        {
            self.by_peer.remove(&peer);
        }
        if let Some(ids) = self.by_service.get_mut(&p.service) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_service.remove(&p.service);
            }
        }
        Some(p)
    }
}

pub(crate) struct Watchers {
    state: Mutex<State>,
    wake: Condvar,
    max: usize,
    /// Tells whether a filtered watcher's listing moved.
    registry: Registry,
}

impl Watchers {
    /// Room for `max` parked requests on listings of `registry`.
    pub(crate) fn new(max: usize, registry: Registry) -> Watchers {
        Watchers {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            max,
            registry,
        }
    }

    /// Parks `rq` until its listing moves past `watch.index`; gives it back
    /// when the registry is stopping or `max` requests are parked.
    pub(crate) fn park(&self, rq: Exchange, watch: &Watch) -> Option<Exchange> {
        // A small random extra wait (up to 1/16) spreads the wake-ups of
        // watchers that started together, as Consul does.
        let extra = watch
            .wait
            .mul_f64(rand::below(1 << 16) as f64 / f64::from(1 << 20));
        let deadline = Instant::now() + watch.wait + extra;
        let peer = rq.peer();
        let mut st = self.state.lock();
        if st.stopping || st.parked.len() >= self.max {
            return Some(rq);
        }
        st.next_id += 1;
        let id = st.next_id;
        let earliest = st.by_deadline.first().is_none_or(|(d, _)| deadline < *d);
        st.by_deadline.insert((deadline, id));
        st.by_service
            .entry(watch.service.clone())
            .or_default()
            .push(id);
        if let Some(peer) = peer {
            st.by_peer.insert(peer, id);
        }
        st.parked.insert(
            id,
            Parked {
                rq,
                service: watch.service.clone(),
                format: watch.format,
                filter: watch.filter.clone(),
                index: watch.index,
                deadline,
                peer,
            },
        );
        if earliest {
            self.wake.notify_all();
        }
        None
    }

    /// Takes the watchers of the changed services whose listing moved:
    /// every unfiltered one (those of [`ANY_SERVICE`] too), and each
    /// filtered one whose filtered listing's index is now past the index it
    /// waits on, so a change to a server in another zone leaves a watcher
    /// of `meta.zone=eu` parked.
    ///
    /// The filtered indexes are read without this lock, once per service
    /// and filter. A change committed after one was read is announced
    /// after it was committed, and its own call reads it: no change is
    /// missed.
    pub(crate) fn take_services(&self, services: &[Arc<str>]) -> Vec<Parked> {
        let mut out = Vec::new();
        let mut filtered = Vec::new();
        let any: Option<Arc<str>> = (!services.is_empty()).then(|| Arc::from(ANY_SERVICE));
        {
            let mut st = self.state.lock();
            for s in services.iter().chain(any.iter()) {
                for id in st.by_service.get(&**s).cloned().unwrap_or_default() {
                    match st.parked.get(&id) {
                        Some(p) if !p.filter.is_empty() => {
                            filtered.push((id, s.clone(), p.filter.clone(), p.index));
                        }
                        _ => out.extend(st.take(id)),
                    }
                }
            }
        }
        if filtered.is_empty() {
            return out;
        }
        // By service and filter.
        type Listing<'a> = (&'a str, &'a [(String, String)]);
        let mut read: HashMap<Listing, u64> = HashMap::new();
        let moved: Vec<u64> = filtered
            .iter()
            .filter(|(_, service, filter, index)| {
                let now = *read
                    .entry((service, filter))
                    .or_insert_with(|| self.registry.index_matching(service, filter));
                now > *index
            })
            .map(|(id, ..)| *id)
            .collect();
        let mut st = self.state.lock();
        for id in moved {
            out.extend(st.take(id));
        }
        out
    }

    /// Takes the watcher parked on `peer`'s connection, if any.
    pub(crate) fn take_peer(&self, peer: SocketAddr) -> Option<Parked> {
        let mut st = self.state.lock();
        let id = *st.by_peer.get(&peer)?;
        st.take(id)
    }

    /// Waits for the next deadline and hands watchers whose wait has passed
    /// to `answer`, until [`stop`](Self::stop).
    pub(crate) fn run_timer(&self, answer: impl Fn(Vec<Parked>)) {
        let mut st = self.state.lock();
        loop {
            if st.stopping {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            if st.recovery_ends.is_some_and(|end| end <= now) {
                st.recovery_ends = None;
                let ids: Vec<u64> = st.parked.keys().copied().collect();
                due.extend(ids.into_iter().filter_map(|id| st.take(id)));
            }
            while let Some(&(d, id)) = st.by_deadline.first() {
                if d > now {
                    break;
                }
                due.extend(st.take(id));
            }
            if !due.is_empty() {
                parking_lot::MutexGuard::unlocked(&mut st, || answer(due));
                continue;
            }
            let next = st.by_deadline.first().map(|&(d, _)| d);
            match next.into_iter().chain(st.recovery_ends).min() {
                Some(d) => {
                    self.wake.wait_until(&mut st, d);
                }
                None => {
                    self.wake.wait_for(&mut st, Duration::from_secs(60));
                }
            }
        }
    }

    /// The registry recovers for `left` more: answer every parked watcher
    /// when that has passed. A little later, since the registry's clock is
    /// coarse (a few milliseconds): answered a moment early, they would
    /// still say `recovering`.
    pub(crate) fn recovery_ends_in(&self, left: Duration) {
        let mut st = self.state.lock();
        st.recovery_ends = Some(Instant::now() + left + Duration::from_millis(50));
        self.wake.notify_all();
    }

    /// Whether a request from `peer` is parked (its connection is waiting
    /// for us, not idle).
    pub(crate) fn is_parked(&self, peer: &SocketAddr) -> bool {
        self.state.lock().by_peer.contains_key(peer)
    }

    /// How many requests are parked.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().parked.len()
    }

    /// The most requests that may be parked.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Refuses new watchers, ends the timer, and takes every parked one.
    pub(crate) fn stop(&self) -> Vec<Parked> {
        let mut st = self.state.lock();
        st.stopping = true;
        self.wake.notify_all();
        st.by_service.clear();
        st.by_deadline.clear();
        st.by_peer.clear();
        st.parked.drain().map(|(_, p)| p).collect()
    }
}
