//! `serve --etcd`: front-ends that keep the table in etcd, so that any
//! number of them, on any machines, serve one registry (docs/ETCD.md).
//!
//! Each front-end serves its listings from a mirror of etcd (a [`Registry`]
//! whose entries never expire by themselves and whose indexes are etcd's
//! revisions), kept by a thread that follows a watch (`follow.rs`). A
//! registration or a change is written to etcd first and answered once the
//! watch has brought it back, so the answer's index is the one every
//! front-end serves. A heartbeat that changes nothing stays here: it moves
//! a deadline this front-end keeps for the entries it hears from. What
//! etcd learns of them is a claim a front-end writes once, bound to its own
//! lease (`keys.rs`), and takes back when the TTL passes without a
//! heartbeat; the entry goes with its last claim. A thread (the keeper)
//! keeps the lease alive, writes claims and takes back the expired ones.
//!
//! When etcd cannot be reached the front-end keeps answering from its
//! mirror and says so (`X-Myrpc-Degraded`), renews what it knows, refuses
//! what would have to be written (503 with Retry-After), and catches up
//! when etcd is back: a new lease and its claims again if the old one
//! expired meanwhile, and a fresh range if the watch's history was
//! compacted.

mod follow;
mod keys;

use std::collections::hash_map::Entry as Slot;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};

use crate::client::Trust;
use crate::error::{Error, Result};
use crate::etcd::{Etcd, int};
use crate::protocol::Status;
use crate::registry::{Mirrored, PutOptions, PutOutcome, Registry, ServiceName};
use keys::{EntryValue, Id, Layout, enc};

/// What `serve --etcd` is given.
#[derive(Debug, Clone)]
pub(crate) struct SharedConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) trust: Trust,
    /// The TTL of the front-end's lease: how long after its death the
    /// entries only it heard from are handed over (plus their own TTL).
    pub(crate) lease_ttl: Duration,
}

impl SharedConfig {
    pub(crate) fn new(endpoints: Vec<String>) -> SharedConfig {
        SharedConfig {
            endpoints,
            prefix: crate::etcd::DEFAULT_PREFIX.to_string(),
            trust: Trust::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// The front-end's lease TTL when none is set: what a front-end's death
/// adds to the TTL of the entries only it heard from.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// Bound of each phase of each unary call to etcd. A member that does not
/// answer costs this much before the next is tried.
const CALL_TIMEOUT: Duration = Duration::from_millis(800);
/// How often the keeper looks for expired entries and claims to write.
const TICK: Duration = Duration::from_millis(50);
/// How long a write waits for the watch to bring it back before it is
/// answered anyway (its index is etcd's either way).
const ECHO_WAIT: Duration = Duration::from_secs(1);
/// Claims written or taken back per tick, so a tick after an outage does
/// not hold expiries up for long.
const BATCH: usize = 256;

/// An entry this front-end hears heartbeats for.
struct Mine {
    deadline: Instant,
    ttl: Duration,
    /// What to put back if the entry is gone from etcd when its claim is
    /// written again (after a lease was lost).
    value: EntryValue,
    /// The lease its claim is bound to in etcd, if written.
    claimed: Option<String>,
}

/// An entry as etcd has it.
struct Known {
    mod_revision: u64,
    value: EntryValue,
    /// Bound to a lease: the library's `EtcdRegistration`, whose lease
    /// decides its life; front-ends never expire it.
    leased: bool,
    /// When nobody claims it (its front-ends died): deleted then, unless a
    /// front-end claims it first.
    orphan: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// The highest revision the mirror reflects.
    applied: u64,
    lease: Option<String>,
    mine: HashMap<Id, Mine>,
    known: HashMap<Id, Known>,
    /// The leases claiming each entry.
    claims: HashMap<Id, BTreeSet<String>>,
    /// Expired claims whose deletion failed, retried.
    releasing: Vec<(Id, String)>,
    /// Entries this front-end's lease claims though it hears nothing of
    /// them, at the keeper's last pass (`release_strays`).
    strays: std::collections::HashSet<Id>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("etcd", &self.etcd.describe())
            .field("degraded", &self.degraded())
            .finish_non_exhaustive()
    }
}

/// What a front-end shares between its routes, its watch and its keeper.
pub(crate) struct Inner {
    etcd: Etcd,
    trust: Trust,
    layout: Layout,
    mirror: Registry,
    lease_ttl: Duration,
    /// Named in claims, for operators reading etcd.
    me: String,
    state: Mutex<State>,
    /// Signalled when `applied` moves.
    applied_moved: Condvar,
    degraded: AtomicBool,
    stopping: AtomicBool,
    /// Asks the lease's thread to keep it alive now (a call failed).
    recheck: AtomicBool,
    /// Set when etcd's revision went back: the watch gives way to a fresh
    /// range.
    data_lost: AtomicBool,
    /// Wakes the keeper early (a claim to write, or the stop).
    keeper_wake: Condvar,
    keeper_lock: Mutex<bool>,
    /// The agent of the watch in progress: shut down to interrupt it.
    watch_agent: Mutex<Option<ureq::Agent>>,
    /// The endpoint the watch uses (modulo their number).
    watch_endpoint: AtomicUsize,
}

/// A front-end's link to etcd: [`Inner`] for the routes, and the threads.
pub(crate) struct Shared {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    /// Grants the front-end's lease, loads the table into `mirror` and
    /// starts following etcd. Fails when etcd cannot be reached: a
    /// front-end that starts without its store would serve an empty list
    /// as if it were the truth.
    pub(crate) fn start(
        cfg: SharedConfig,
        mirror: Registry,
        me: String,
        name: &str,
    ) -> Result<Shared> {
        if cfg.lease_ttl < Duration::from_secs(2) {
            return Err(Error::config(
                "etcd_lease_ttl",
                "must be at least 2 s, the least etcd grants",
            ));
        }
        let etcd = Etcd::new(&cfg.endpoints, CALL_TIMEOUT, &cfg.trust)?;
        etcd.check_version()?;
        let inner = Arc::new(Inner {
            etcd,
            trust: cfg.trust,
            layout: Layout::new(&cfg.prefix),
            mirror,
            lease_ttl: cfg.lease_ttl,
            me,
            state: Mutex::new(State::default()),
            applied_moved: Condvar::new(),
            degraded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            data_lost: AtomicBool::new(false),
            recheck: AtomicBool::new(false),
            keeper_wake: Condvar::new(),
            keeper_lock: Mutex::new(false),
            watch_agent: Mutex::new(None),
            watch_endpoint: AtomicUsize::new(0),
        });
        inner.grant()?;
        inner.relist(false)?;
        // Its listings are etcd's: complete from the start.
        inner.mirror.recovered();
        let mut shared = Shared {
            inner: inner.clone(),
            threads: Vec::new(),
        };
        let i = inner.clone();
        shared.threads.push(
            thread::Builder::new()
                .name(format!("{name}-etcdw"))
                .spawn(move || follow::run(&i))
                .map_err(|e| Error::io("spawn the etcd watch thread", e))?,
        );
        let i = inner.clone();
        shared.threads.push(
            thread::Builder::new()
                .name(format!("{name}-etcdk"))
                .spawn(move || i.keep())
                .map_err(|e| Error::io("spawn the etcd keeper thread", e))?,
        );
        let i = inner;
        shared.threads.push(
            thread::Builder::new()
                .name(format!("{name}-etcdl"))
                .spawn(move || i.keep_lease())
                .map_err(|e| Error::io("spawn the etcd lease thread", e))?,
        );
        Ok(shared)
    }

    pub(crate) fn inner(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// Stops both threads and revokes the lease, so that the entries only
    /// this front-end heard from are handed over at once rather than
    /// when the lease would have expired. Returns whether a thread had
    /// panicked.
    pub(crate) fn stop(&mut self) -> bool {
        let i = &self.inner;
        i.stopping.store(true, Ordering::SeqCst);
        *i.keeper_lock.lock() = true;
        i.keeper_wake.notify_all();
        if let Some(a) = i.watch_agent.lock().take() {
            a.shutdown();
        }
        let mut panicked = false;
        for t in self.threads.drain(..) {
            panicked |= t.join().is_err();
        }
        if let Some(lease) = i.state.lock().lease.take()
            && let Err(e) = i.etcd.call("/v3/lease/revoke", &json!({ "ID": lease }))
        {
            log::warn!("revoking this front-end's etcd lease failed: {e}; it expires by itself");
        }
        panicked
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Whether a txn's compare held.
fn succeeded(v: &Value) -> bool {
    v["succeeded"].as_bool() == Some(true)
}

fn revision(v: &Value) -> u64 {
    int(&v["header"]["revision"]).unwrap_or(0)
}

/// A compare that holds when no key lies in `[from, to)`.
fn none_in(from: &str, to: &str) -> Value {
    json!({ "key": enc(from), "range_end": enc(to), "target": "CREATE", "result": "EQUAL", "create_revision": "0" })
}

fn put(key: &str, value: &str, lease: Option<&str>) -> Value {
    let mut p = json!({ "key": enc(key), "value": enc(value) });
    if let Some(l) = lease {
        p["lease"] = Value::from(l);
    }
    json!({ "request_put": p })
}

impl Inner {
    /// The revision the mirror reflects.
    pub(crate) fn applied(&self) -> u64 {
        self.state.lock().applied
    }

    /// Whether etcd could not be reached at the last try.
    pub(crate) fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn unreachable(&self, what: &str) -> Error {
        Error::Unreachable {
            url: self.etcd.describe(),
            source: format!(
                "etcd is unreachable; {what} waits until it is back (renewals of known entries go on)"
            )
            .into(),
        }
    }

    /// Registers or renews, as [`Registry::put_with`] does for one
    /// registry: a renewal that changes nothing stays here; anything else
    /// is written to etcd and answered once the mirror has it.
    ///
    /// # Errors
    ///
    /// As [`Registry::put_with`] for bad input; [`Error::Unreachable`]
    /// when the put needs etcd and etcd cannot be reached.
    pub(crate) fn put(&self, service: &str, addr: &str, opts: &PutOptions) -> Result<PutOutcome> {
        let m = &self.mirror;
        m.check_put(service, addr, opts)?;
        let ttl = m.effective_ttl(opts.ttl_value());
        let id: Id = (service.to_string(), addr.to_string());
        if m.same_labels(service, addr, opts) == Some(true) && self.renew(&id, Some(ttl)) {
            return Ok(PutOutcome::new(ttl, m.index(service), false));
        }
        if self.degraded() {
            return Err(self.unreachable("a registration or a change"));
        }
        let current = m.labels_of(service, addr);
        if current.is_none() && m.len() >= m.max_entries() {
            return Err(Error::Full {
                limit: m.max_entries(),
            });
        }
        let status = opts
            .status_value()
            .or(current.map(|c| c.2))
            .unwrap_or(Status::Up);
        let value = EntryValue {
            weight: opts.weight_value(),
            meta: opts.meta_map().clone(),
            status,
            ttl: Some(ttl),
        };
        let lease = self.lease()?;
        // Known here before etcd has the claim, so that the keeper never
        // takes the claim for a stray (`release_strays`); what was here
        // before comes back if the write fails.
        let before = self.state.lock().mine.insert(
            id.clone(),
            Mine {
                deadline: Instant::now() + ttl,
                ttl,
                value: value.clone(),
                claimed: Some(lease.clone()),
            },
        );
        let v = self.call(
            "/v3/kv/txn",
            &json!({ "success": [
                put(&self.layout.entry(&id), &value.encode(addr), None),
                put(&self.layout.claim(&id, &lease), &self.me, Some(&lease)),
            ]}),
        );
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                let mut st = self.state.lock();
                match before {
                    Some(b) => st.mine.insert(id, b),
                    None => st.mine.remove(&id),
                };
                return Err(e);
            }
        };
        let rev = revision(&v);
        self.wait_applied(rev, ECHO_WAIT);
        Ok(PutOutcome::new(ttl, m.index(service).max(rev), true))
    }

    /// A heartbeat for an entry etcd has, unchanged: its deadline here
    /// moves, and a claim is queued if this front-end had none. `ttl`:
    /// the TTL asked, which must be the entry's; `None` keeps the entry's
    /// (a UDP renewal). Returns whether the entry was known.
    fn renew(&self, id: &Id, ttl: Option<Duration>) -> bool {
        let now = Instant::now();
        let mut st = self.state.lock();
        let State { mine, known, .. } = &mut *st;
        let queued = match mine.entry(id.clone()) {
            Slot::Occupied(mut o) => {
                let m = o.get_mut();
                if ttl.is_some_and(|t| t != m.ttl) {
                    return false;
                }
                m.deadline = now + m.ttl;
                false
            }
            Slot::Vacant(v) => {
                let Some(k) = known.get(id) else {
                    return false;
                };
                let entry_ttl = k.value.ttl;
                // A TTL other than the one etcd holds is a change, written;
                // the library's entries carry none (their lease decides).
                let ttl = match (ttl, entry_ttl) {
                    (Some(asked), Some(held)) if asked != held => return false,
                    (Some(t), _) | (None, Some(t)) => t,
                    (None, None) => self.mirror.effective_ttl(None),
                };
                v.insert(Mine {
                    deadline: now + ttl,
                    ttl,
                    value: EntryValue {
                        ttl: Some(ttl),
                        ..k.value.clone()
                    },
                    claimed: None,
                });
                true
            }
        };
        drop(st);
        if queued {
            self.keeper_wake.notify_all();
        }
        self.mirror.count_renewal();
        true
    }

    /// A UDP renewal: only of an entry etcd has, and it changes nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`] or [`Error::InvalidAddr`].
    pub(crate) fn renew_existing(&self, service: &str, addr: &str) -> Result<bool> {
        crate::protocol::validate_service(service)?;
        crate::protocol::validate_addr(addr)?;
        Ok(self.renew(&(service.to_string(), addr.to_string()), None))
    }

    /// Deregisters from every front-end: the entry and all its claims.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`] or [`Error::InvalidAddr`];
    /// [`Error::Unreachable`] when etcd cannot be reached.
    pub(crate) fn remove(&self, service: &str, addr: &str) -> Result<bool> {
        crate::protocol::validate_service(service)?;
        crate::protocol::validate_addr(addr)?;
        if self.degraded() {
            return Err(self.unreachable("a deregistration"));
        }
        let id: Id = (service.to_string(), addr.to_string());
        let (from, to) = self.layout.claims_range(&id);
        let (from, to) = (enc(&from), enc(&to));
        let v = self.call(
            "/v3/kv/txn",
            &json!({ "success": [
                { "request_delete_range": { "key": enc(&self.layout.entry(&id)) } },
                { "request_delete_range": { "key": from, "range_end": to } },
            ]}),
        )?;
        self.state.lock().mine.remove(&id);
        let deleted = int(&v["responses"][0]["response_delete_range"]["deleted"]).unwrap_or(0);
        self.wait_applied(revision(&v), ECHO_WAIT);
        Ok(deleted > 0)
    }

    /// Makes a long-poll's index safe to park on: when a client brings an
    /// index another front-end gave it, waits (briefly) until this one has
    /// followed etcd that far, and then serves the unchanged listing at
    /// that index, so the client never sees its index go back.
    pub(crate) fn catch_up(&self, service: &str, filter: &[(String, String)], index: u64) {
        let current = match filter {
            [] => self.mirror.index(service),
            _ => self.mirror.index_matching(service, filter),
        };
        if index <= current {
            return;
        }
        if index > self.applied() {
            // An index etcd has not reached at all (of another registry, or
            // of before etcd lost its data) is answered at once, as one
            // registry answers an index from before its restart; asking
            // costs a millisecond, where waiting for it would cost the wait.
            let (key, _) = self.layout.range();
            let asked = self.call(
                "/v3/kv/range",
                &json!({ "key": enc(&key), "count_only": true }),
            );
            if asked.is_ok_and(|v| revision(&v) < index) {
                return;
            }
            // The watch brings it in milliseconds; a watch that lags by a
            // second is bypassed with a fresh read.
            if !self.wait_applied(index, ECHO_WAIT) && !self.relist(false).is_ok_and(|r| r >= index)
            {
                return;
            }
        }
        self.mirror.mirror_raise(service, index);
    }

    /// Waits until the mirror reflects `rev`; whether it does.
    fn wait_applied(&self, rev: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut st = self.state.lock();
        while st.applied < rev {
            if self.applied_moved.wait_until(&mut st, deadline).timed_out() {
                return st.applied >= rev;
            }
        }
        true
    }

    /// The lease claims are bound to; granted if there is none.
    fn lease(&self) -> Result<String> {
        if let Some(l) = self.state.lock().lease.clone() {
            return Ok(l);
        }
        self.grant()
    }

    /// Grants a new lease: every claim is written again under it.
    fn grant(&self) -> Result<String> {
        let v = self.call(
            "/v3/lease/grant",
            &json!({ "TTL": self.lease_ttl.as_secs().max(2) }),
        )?;
        let id = self.etcd.lease_id(&v)?;
        let mut st = self.state.lock();
        st.lease = Some(id.clone());
        for m in st.mine.values_mut() {
            m.claimed = None;
        }
        Ok(id)
    }

    /// Reads the whole table from etcd into the mirror (at start, when the
    /// watch's history was compacted away, and when `lost`: etcd lost its
    /// data and its revision went back). Returns the revision the mirror
    /// reflects.
    fn relist(&self, lost: bool) -> Result<u64> {
        let (from, to) = self.layout.range();
        let v = self.etcd.call(
            "/v3/kv/range",
            &json!({ "key": enc(&from), "range_end": enc(&to) }),
        )?;
        let rev = revision(&v);
        let mut entries: HashMap<Id, Known> = HashMap::new();
        let mut claims: HashMap<Id, BTreeSet<String>> = HashMap::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            match self.layout.parse(&keys::dec(&kv["key"])) {
                Some(keys::Key::Entry(id)) => {
                    let known = Known {
                        mod_revision: int(&kv["mod_revision"]).unwrap_or(rev),
                        value: EntryValue::decode(&keys::dec(&kv["value"])),
                        leased: int(&kv["lease"]).is_some_and(|l| l != 0),
                        orphan: None,
                    };
                    entries.insert(id, known);
                }
                Some(keys::Key::Claim(id, lease)) => {
                    claims.entry(id).or_default().insert(lease);
                }
                None => {}
            }
        }
        let mut st = self.state.lock();
        if rev < st.applied {
            if !lost {
                // The watch applied newer changes while this was read.
                return Ok(st.applied);
            }
            log::warn!(
                "etcd's revision went back from {} to {rev}: it lost its data; serving what it has now",
                st.applied
            );
            st.applied = rev;
        }
        let now = Instant::now();
        let mirror = &self.mirror;
        let gone: Vec<Id> = mirror
            .entries()
            .into_iter()
            .map(|e| (e.service, e.addr))
            .filter(|id| !entries.contains_key(id))
            .collect();
        let mut batch: Vec<Mirrored<'_>> = Vec::with_capacity(gone.len() + entries.len());
        for id in &gone {
            batch.push((rev, &id.0, &id.1, None));
            st.mine.remove(id);
        }
        for (id, k) in &entries {
            let v = &k.value;
            batch.push((rev, &id.0, &id.1, Some((v.weight, &v.meta, v.status))));
        }
        mirror.mirror(&batch);
        drop(batch);
        for (id, k) in &mut entries {
            let before = st.known.get(id).and_then(|k| k.orphan);
            k.orphan = self.orphan_deadline(id, k, &claims, now, before);
        }
        let lease = st.lease.clone();
        for (id, m) in st.mine.iter_mut() {
            if lease.is_none()
                || !claims
                    .get(id)
                    .is_some_and(|c| c.contains(lease.as_ref().unwrap()))
            {
                m.claimed = None;
            }
        }
        st.known = entries;
        st.claims = claims;
        st.applied = st.applied.max(rev);
        mirror.mirror_reached(st.applied);
        drop(st);
        self.applied_moved.notify_all();
        Ok(rev)
    }

    /// When an entry nobody claims is deleted (`before`: the time already
    /// set), `None` while someone claims it or its lease decides.
    fn orphan_deadline(
        &self,
        id: &Id,
        k: &Known,
        claims: &HashMap<Id, BTreeSet<String>>,
        now: Instant,
        before: Option<Instant>,
    ) -> Option<Instant> {
        if k.leased || claims.get(id).is_some_and(|c| !c.is_empty()) {
            return None;
        }
        let ttl = k
            .value
            .ttl
            .unwrap_or_else(|| self.mirror.effective_ttl(None));
        Some(before.unwrap_or(now + ttl))
    }

    /// Applies what one watch answer brought, in order; changes at or
    /// below `applied` are already in the mirror (a relist read them).
    fn apply(&self, events: &[Value], progress: Option<u64>) {
        let now = Instant::now();
        let mut st = self.state.lock();
        let floor = st.applied;
        let mut top = floor;
        let mut touched: Vec<Id> = Vec::new();
        let mut changes: Vec<(u64, Id, Option<EntryValue>)> = Vec::new();
        for ev in events {
            let kv = &ev["kv"];
            let rev = int(&kv["mod_revision"]).unwrap_or(0);
            if rev <= floor {
                continue;
            }
            top = top.max(rev);
            let deleted = ev["type"].as_str() == Some("DELETE");
            match self.layout.parse(&keys::dec(&kv["key"])) {
                Some(keys::Key::Entry(id)) => {
                    if deleted {
                        changes.push((rev, id.clone(), None));
                        st.known.remove(&id);
                        // Deregistered or expired everywhere: a heartbeat
                        // from now on registers it again.
                        st.mine.remove(&id);
                    } else {
                        let value = EntryValue::decode(&keys::dec(&kv["value"]));
                        if let Some(m) = st.mine.get_mut(&id) {
                            // A TTL its server asked at another front-end
                            // holds here too: counted from the last beat
                            // heard here, as one registry would.
                            if let Some(t) = value.ttl
                                && t != m.ttl
                            {
                                let beat = m.deadline.checked_sub(m.ttl).unwrap_or(now);
                                m.deadline = beat + t;
                                m.ttl = t;
                            }
                            m.value = EntryValue {
                                ttl: Some(m.ttl),
                                ..value.clone()
                            };
                        }
                        changes.push((rev, id.clone(), Some(value.clone())));
                        let orphan = st.known.get(&id).and_then(|k| k.orphan);
                        st.known.insert(
                            id.clone(),
                            Known {
                                mod_revision: rev,
                                value,
                                leased: int(&kv["lease"]).is_some_and(|l| l != 0),
                                orphan,
                            },
                        );
                    }
                    touched.push(id);
                }
                Some(keys::Key::Claim(id, lease)) => {
                    let set = st.claims.entry(id.clone()).or_default();
                    if deleted {
                        set.remove(&lease);
                        if set.is_empty() {
                            st.claims.remove(&id);
                        }
                        if st.lease.as_ref() == Some(&lease)
                            && let Some(m) = st.mine.get_mut(&id)
                        {
                            m.claimed = None;
                        }
                    } else {
                        set.insert(lease);
                    }
                    touched.push(id);
                }
                None => {}
            }
        }
        let batch: Vec<Mirrored<'_>> = changes
            .iter()
            .map(|(rev, id, v)| {
                let labels = v.as_ref().map(|v| (v.weight, &v.meta, v.status));
                (*rev, id.0.as_str(), id.1.as_str(), labels)
            })
            .collect();
        self.mirror.mirror(&batch);
        drop(batch);
        let State { known, claims, .. } = &mut *st;
        for id in touched {
            if let Some(k) = known.get_mut(&id) {
                k.orphan = self.orphan_deadline(&id, k, claims, now, k.orphan);
            }
        }
        let reached = top.max(progress.unwrap_or(0));
        if reached > st.applied {
            st.applied = reached;
            self.mirror.mirror_reached(reached);
        }
        drop(st);
        self.applied_moved.notify_all();
    }

    /// The lease's loop: kept alive every third of its TTL (every 200 ms
    /// while etcd does not answer, so an outage ends quickly), the
    /// degraded mark set and cleared, the watch moved to the member that
    /// answers. A thread of its own, so that no amount of work for the
    /// keeper (a mass expiry, claims after an outage) delays a keep-alive
    /// past the lease's TTL.
    fn keep_lease(&self) {
        let period = self.lease_ttl / 3;
        let mut failing = false;
        loop {
            {
                let mut stop = self.keeper_lock.lock();
                let wait = if failing { TICK * 4 } else { period };
                let until = Instant::now() + wait;
                while !*stop && !self.recheck.load(Ordering::SeqCst) {
                    if self.keeper_wake.wait_until(&mut stop, until).timed_out() {
                        break;
                    }
                }
                if *stop {
                    return;
                }
            }
            self.recheck.store(false, Ordering::SeqCst);
            let ok = self.keep_alive();
            if ok {
                self.follow_the_answering_endpoint();
            }
            if ok == failing {
                failing = !ok;
                self.degraded.store(failing, Ordering::Relaxed);
                match failing {
                    true => log::warn!(
                        "etcd ({}) is unreachable: serving the last state read, renewing known entries, refusing registrations",
                        self.etcd.describe()
                    ),
                    false => log::info!("etcd is reachable again"),
                }
            }
        }
    }

    /// The keeper's loop: claims written, expired entries taken back,
    /// orphans deleted, a batch of each a tick, while etcd answers.
    fn keep(&self) {
        loop {
            {
                let mut stop = self.keeper_lock.lock();
                if !*stop {
                    self.keeper_wake.wait_for(&mut stop, TICK);
                }
                if *stop {
                    return;
                }
            }
            if !self.degraded() {
                let steps = self.release_expired()
                    && self.write_claims()
                    && self.release_strays()
                    && self.delete_orphans();
                if !steps {
                    // Whether etcd still answers is the lease's to tell.
                    self.recheck.store(true, Ordering::SeqCst);
                    self.keeper_wake.notify_all();
                }
            }
        }
    }

    /// Keeps the lease alive, granting a new one if etcd forgot it; whether
    /// etcd answered.
    fn keep_alive(&self) -> bool {
        let lease = self.state.lock().lease.clone();
        let Some(id) = lease else {
            return self.grant().is_ok();
        };
        match self.call("/v3/lease/keepalive", &json!({ "ID": id })) {
            // A lease gone is answered without a TTL (CRATE-NOTES §4.3).
            Ok(v) if int(&v["result"]["TTL"]).is_some_and(|t| t > 0) => true,
            Ok(_) => {
                log::warn!(
                    "this front-end's etcd lease expired; claiming its entries again under a new one"
                );
                self.grant().is_ok()
            }
            Err(_) => false,
        }
    }

    /// Moves the watch to the endpoint that answered the keeper, when it
    /// is elsewhere: a member that stopped answering (paused, or cut off
    /// by a network that drops packets) keeps a watch silent, not broken,
    /// and the keeper's calls find that out first.
    fn follow_the_answering_endpoint(&self) {
        let good = self.etcd.current();
        let n = self.etcd.endpoints().len();
        if self.watch_endpoint.load(Ordering::SeqCst) % n != good {
            self.watch_endpoint.store(good, Ordering::SeqCst);
            if let Some(a) = self.watch_agent.lock().take() {
                a.shutdown();
            }
        }
    }

    /// One unary call to etcd, its answer's revision checked: etcd's
    /// revision never goes back, so one below what the mirror reflects
    /// means etcd lost its data.
    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let v = self.etcd.call(path, body)?;
        let header = match v.get("result") {
            Some(r) => &r["header"],
            None => &v["header"],
        };
        self.check_revision(int(&header["revision"]));
        Ok(v)
    }

    /// etcd's revision below the one applied means etcd lost its data and
    /// started again: a watch resumed at the old revision would wait for
    /// it in silence (CRATE-NOTES §4.5), so the table is read again.
    pub(super) fn check_revision(&self, now: Option<u64>) {
        let Some(now) = now else { return };
        if now < self.state.lock().applied {
            self.data_lost.store(true, Ordering::SeqCst);
            if let Some(a) = self.watch_agent.lock().take() {
                a.shutdown();
            }
        }
    }

    /// Takes back the claims of entries whose TTL passed here without a
    /// heartbeat, and deletes an entry with its last claim. Whether etcd
    /// answered every call.
    fn release_expired(&self) -> bool {
        let now = Instant::now();
        let mut due: Vec<(Id, String, bool)> = Vec::new();
        {
            let mut st = self.state.lock();
            let mut expired = Vec::new();
            st.mine.retain(|id, m| {
                if m.deadline > now {
                    return true;
                }
                expired.push((id.clone(), m.claimed.take()));
                false
            });
            for (id, claimed) in expired {
                let leased = st.known.get(&id).is_some_and(|k| k.leased);
                // Never claimed here: etcd holds nothing of ours; if nobody
                // claims it, it is an orphan already.
                if let Some(lease) = claimed {
                    due.push((id, lease, leased));
                }
            }
            for (id, lease) in std::mem::take(&mut st.releasing) {
                let leased = st.known.get(&id).is_some_and(|k| k.leased);
                due.push((id, lease, leased));
            }
        }
        let mut ok = true;
        for (n, (id, lease, leased)) in due.into_iter().enumerate() {
            // The rest at the next tick, so that one tick stays short.
            if !ok || n >= BATCH {
                self.state.lock().releasing.push((id, lease));
                continue;
            }
            match self.release(&id, &lease, leased) {
                Ok(gone) => {
                    if gone {
                        log::info!("expired {} from {}", id.1, ServiceName(&id.0));
                    }
                }
                Err(e) => {
                    log::debug!("taking back the claim of {} failed: {e}", id.1);
                    ok = false;
                    self.state.lock().releasing.push((id, lease));
                }
            }
        }
        ok
    }

    /// Deletes this front-end's claim of `id`, and the entry with it when
    /// no other front-end claims it (and no lease of its own keeps it).
    /// Returns whether the entry went.
    fn release(&self, id: &Id, lease: &str, leased: bool) -> Result<bool> {
        let claim = self.layout.claim(id, lease);
        let (of, end) = self.layout.claims_range(id);
        let drop_claim = json!({ "request_delete_range": { "key": enc(&claim) } });
        let body = if leased {
            json!({ "success": [drop_claim] })
        } else {
            json!({
                "compare": [none_in(&of, &claim), none_in(&format!("{claim}\0"), &end)],
                "success": [drop_claim, { "request_delete_range": { "key": enc(&self.layout.entry(id)) } }],
                "failure": [drop_claim],
            })
        };
        let v = self.call("/v3/kv/txn", &body)?;
        Ok(!leased && succeeded(&v))
    }

    /// Takes back the claims this front-end holds for entries it no longer
    /// hears from. A claim written back with its entry (`write_claims`)
    /// just after the entry was deleted is one: the deletion, applied
    /// after it, forgets the entry here, and nothing else would ever take
    /// that claim back, keeping the entry listed for as long as this
    /// front-end lives. A claim is taken for a stray only when seen so
    /// on two passes, so that a release already sent is not sent again.
    fn release_strays(&self) -> bool {
        let due: Vec<(Id, String, bool)> = {
            let mut st = self.state.lock();
            let Some(lease) = st.lease.clone() else {
                return true;
            };
            let now: std::collections::HashSet<Id> = st
                .claims
                .iter()
                .filter(|(id, c)| c.contains(&lease) && !st.mine.contains_key(*id))
                .map(|(id, _)| id.clone())
                .collect();
            let seen = std::mem::replace(&mut st.strays, now);
            st.strays
                .iter()
                .filter(|id| seen.contains(*id))
                .take(BATCH)
                .map(|id| {
                    let leased = st.known.get(id).is_some_and(|k| k.leased);
                    (id.clone(), lease.clone(), leased)
                })
                .collect()
        };
        for (id, lease, leased) in due {
            match self.release(&id, &lease, leased) {
                Ok(true) => log::info!(
                    "expired {} from {}: nobody beats for it here any more",
                    id.1,
                    ServiceName(&id.0)
                ),
                Ok(false) => {}
                Err(e) => {
                    log::debug!("taking back the stray claim of {} failed: {e}", id.1);
                    return false;
                }
            }
            self.state.lock().strays.remove(&id);
        }
        true
    }

    /// Writes the claims this front-end owes: entries it heard from first
    /// (or again after its lease was lost). An entry gone from etcd
    /// meanwhile is put back with it, since its server is beating here.
    fn write_claims(&self) -> bool {
        let (lease, owed): (String, Vec<(Id, EntryValue)>) = {
            let st = self.state.lock();
            let Some(lease) = st.lease.clone() else {
                return false;
            };
            let owed = st
                .mine
                .iter()
                .filter(|(_, m)| m.claimed.as_ref() != Some(&lease))
                .take(BATCH)
                .map(|(id, m)| (id.clone(), m.value.clone()))
                .collect();
            (lease, owed)
        };
        for (id, value) in owed {
            let entry = self.layout.entry(&id);
            let claim = put(&self.layout.claim(&id, &lease), &self.me, Some(&lease));
            let body = json!({
                "compare": [{ "key": enc(&entry), "target": "CREATE", "result": "GREATER", "create_revision": "0" }],
                "success": [claim],
                "failure": [put(&entry, &value.encode(&id.1), None), claim],
            });
            match self.call("/v3/kv/txn", &body) {
                Ok(v) => {
                    if !succeeded(&v) {
                        log::info!(
                            "put {} in {} back into etcd: it beats here",
                            id.1,
                            ServiceName(&id.0)
                        );
                    }
                    if let Some(m) = self.state.lock().mine.get_mut(&id) {
                        m.claimed = Some(lease.clone());
                    }
                }
                Err(e) => {
                    log::debug!("claiming {} failed: {e}", id.1);
                    return false;
                }
            }
        }
        true
    }

    /// Deletes the entries nobody has claimed for their TTL (their
    /// front-ends died), unless a claim or a change came meanwhile.
    fn delete_orphans(&self) -> bool {
        let now = Instant::now();
        let due: Vec<(Id, u64)> = {
            let st = self.state.lock();
            st.known
                .iter()
                .filter(|(id, k)| k.orphan.is_some_and(|o| o <= now) && !st.mine.contains_key(*id))
                .take(BATCH)
                .map(|(id, k)| (id.clone(), k.mod_revision))
                .collect()
        };
        for (id, rev) in due {
            let entry = self.layout.entry(&id);
            let (of, end) = self.layout.claims_range(&id);
            let body = json!({
                "compare": [
                    none_in(&of, &end),
                    { "key": enc(&entry), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string() },
                ],
                "success": [{ "request_delete_range": { "key": enc(&entry) } }],
            });
            match self.call("/v3/kv/txn", &body) {
                Ok(v) => {
                    if succeeded(&v) {
                        log::info!(
                            "expired {} from {}: no front-end heard from it for its TTL",
                            id.1,
                            ServiceName(&id.0)
                        );
                    }
                    // Else claimed or changed meanwhile; either way not ours
                    // to delete now, and the watch tells what happened.
                    if let Some(k) = self.state.lock().known.get_mut(&id)
                        && k.mod_revision == rev
                    {
                        k.orphan = None;
                    }
                }
                Err(e) => {
                    log::debug!("deleting the orphan {} failed: {e}", id.1);
                    return false;
                }
            }
        }
        true
    }
}
