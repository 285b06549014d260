//! Parked long-polls: `GET …?index=N&wait=D` waits here, holding no request
//! thread, until the service changes (answered from the thread that
//! committed the change, through the registry's notifier) or its wait
//! passes (answered from this module's timer thread).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::route::{self, Format, Watch};
use super::worker::to_tiny;
use crate::rand;
use crate::registry::Registry;

struct Parked {
    rq: tiny_http::Request,
    service: String,
    format: Format,
    deadline: Instant,
    peer: Option<SocketAddr>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    parked: HashMap<u64, Parked>,
    by_service: HashMap<String, Vec<u64>>,
    by_deadline: BTreeSet<(Instant, u64)>,
    peers: HashMap<SocketAddr, usize>,
    stopping: bool,
}

impl State {
    fn take(&mut self, id: u64) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        self.by_deadline.remove(&(p.deadline, id));
        if let Some(peer) = p.peer
            && let Some(n) = self.peers.get_mut(&peer)
        {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&peer);
            }
        }
        Some(p)
    }
}

pub(crate) struct Watchers {
    registry: Registry,
    state: Mutex<State>,
    wake: Condvar,
    subscription: Mutex<Option<u64>>,
}

impl Watchers {
    /// Watchers of `registry`, told of its changes.
    pub(crate) fn new(registry: Registry) -> Arc<Watchers> {
        let w = Arc::new(Watchers {
            registry: registry.clone(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            subscription: Mutex::new(None),
        });
        // A weak reference: the registry may outlive the server.
        let weak = Arc::downgrade(&w);
        let id = registry.subscribe(Arc::new(move |services: &[Arc<str>]| {
            if let Some(w) = weak.upgrade() {
                w.notify(services);
            }
        }));
        *w.subscription.lock() = Some(id);
        w
    }

    /// Starts the thread that answers watchers whose wait has passed.
    pub(crate) fn start_timer(self: &Arc<Self>, name: String) -> std::io::Result<JoinHandle<()>> {
        let w = self.clone();
        thread::Builder::new().name(name).spawn(move || w.timer())
    }

    /// Parks `rq` until `watch.service` moves past `watch.index`.
    pub(crate) fn park(&self, rq: tiny_http::Request, watch: Watch) {
        // A small random extra wait (up to 1/16) spreads the wake-ups of
        // watchers that started together, as Consul does.
        let extra = watch
            .wait
            .mul_f64(rand::below(1 << 16) as f64 / f64::from(1 << 20));
        let deadline = Instant::now() + watch.wait + extra;
        let peer = rq.remote_addr().copied();
        let service = watch.service.clone();
        {
            let mut st = self.state.lock();
            if st.stopping {
                drop(st);
                return self.answer(rq, &service, watch.format);
            }
            st.next_id += 1;
            let id = st.next_id;
            let earliest = st.by_deadline.first().is_none_or(|(d, _)| deadline < *d);
            st.by_deadline.insert((deadline, id));
            st.by_service.entry(service.clone()).or_default().push(id);
            if let Some(peer) = peer {
                *st.peers.entry(peer).or_insert(0) += 1;
            }
            st.parked.insert(
                id,
                Parked {
                    rq,
                    service: service.clone(),
                    format: watch.format,
                    deadline,
                    peer,
                },
            );
            if earliest {
                self.wake.notify_all();
            }
        }
        // A change committed between the route's check and the insertion
        // above was announced before this watcher was there to hear it.
        if self.registry.index(&service) > watch.index {
            self.notify(&[Arc::from(service.as_str())]);
        }
    }

    /// Answers every watcher of the changed services.
    fn notify(&self, services: &[Arc<str>]) {
        let woken: Vec<Parked> = {
            let mut st = self.state.lock();
            let mut out = Vec::new();
            for s in services {
                for id in st.by_service.remove(&**s).unwrap_or_default() {
                    out.extend(st.take(id));
                }
            }
            out
        };
        for p in woken {
            self.answer(p.rq, &p.service, p.format);
        }
    }

    fn answer(&self, rq: tiny_http::Request, service: &str, format: Format) {
        let resp = route::render(&self.registry, service, format);
        if let Err(e) = rq.respond(to_tiny(resp)) {
            log::debug!("answering a watcher failed: {e}");
        }
    }

    fn timer(&self) {
        let mut st = self.state.lock();
        loop {
            if st.stopping {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(&(d, id)) = st.by_deadline.first() {
                if d > now {
                    break;
                }
                if let Some(p) = st.take(id) {
                    if let Some(ids) = st.by_service.get_mut(&p.service) {
                        ids.retain(|i| *i != id);
                        if ids.is_empty() {
                            st.by_service.remove(&p.service);
                        }
                    }
                    due.push(p);
                }
            }
            if !due.is_empty() {
                parking_lot::MutexGuard::unlocked(&mut st, || {
                    for p in due {
                        self.answer(p.rq, &p.service, p.format);
                    }
                });
                continue;
            }
            match st.by_deadline.first() {
                Some(&(d, _)) => {
                    self.wake.wait_until(&mut st, d);
                }
                None => {
                    self.wake.wait_for(&mut st, Duration::from_secs(60));
                }
            }
        }
    }

    /// Whether a request from `peer` is parked (its connection is waiting
    /// for us, not idle).
    pub(crate) fn is_parked(&self, peer: &SocketAddr) -> bool {
        self.state.lock().peers.contains_key(peer)
    }

    /// How many requests are parked.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().parked.len()
    }

    /// Answers every parked request with the current list and ends the
    /// timer (the caller joins it).
    pub(crate) fn stop(&self) {
        let all: Vec<Parked> = {
            let mut st = self.state.lock();
            st.stopping = true;
            self.wake.notify_all();
            st.by_service.clear();
            st.by_deadline.clear();
            st.peers.clear();
            st.parked.drain().map(|(_, p)| p).collect()
        };
        for p in all {
            self.answer(p.rq, &p.service, p.format);
        }
        if let Some(id) = self.subscription.lock().take() {
            self.registry.unsubscribe(id);
        }
    }
}
