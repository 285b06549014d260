//! The registry table: entries, TTLs, the modify index, expiry.
//!
//! This file holds the [`Registry`] API; the rest is one file a job:
//! `table` (the table under its lock, its caches and listings), `entries`
//! (a service's entries and their expiry queue), `options` (what a put
//! carries, the builder, the counts), `pairs` (the indexes of filtered
//! listings, from the label pairs that changed), `sweeper` (the thread
//! that expires entries on time, started by [`Registry::start_sweeper`]),
//! `snapshot` (the table as text, [`Registry::snapshot`] and
//! [`Registry::restore`], and the file that keeps it across restarts) and
//! `history` (the last removals and the counts per second the status page
//! shows), `changelog` (each service's last changes, for delta
//! long-polls).

mod changelog;
mod entries;
mod history;
mod options;
mod pairs;
pub(crate) mod snapshot;
mod sweeper;
mod table;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(test)]
pub(crate) use changelog::LOG_LIMIT;
pub use entries::TTL_LIMIT;
use entries::{Key, Labels, Stamp, Tick};
use history::Event;
pub(crate) use history::{Lately, REMOVALS_KEPT, Removal, Second};
pub use options::{
    DEFAULT_TTL, Footprint, MAX_WEIGHT, PutOptions, PutOutcome, RegistryBuilder, RegistryStats,
};
pub use sweeper::Sweeper;
pub(crate) use table::Notifier;
use table::{Details, Inner, Locked, Raw, Service, announce};
pub use table::{EntryInfo, Listing};

use crate::error::{Error, Result};
use crate::protocol::{Status, validate_service};

/// What changed in a service since an index ([`Registry::delta`]), each
/// list sorted by address.
#[derive(Debug)]
pub(crate) struct Delta {
    /// The service's index now.
    pub(crate) index: u64,
    pub(crate) added: Vec<EntryInfo>,
    pub(crate) changed: Vec<EntryInfo>,
    pub(crate) removed: Vec<String>,
}

/// A change a shared store made, for [`Registry::mirror`]: its revision,
/// service, address, and labels (`None`: removed).
#[cfg(feature = "etcd")]
pub(crate) type Mirrored<'a> = (
    u64,
    &'a str,
    &'a str,
    Option<(u32, &'a BTreeMap<String, String>, Status)>,
);

/// What [`Registry::put_locked`] did.
struct Put {
    index: u64,
    changed: bool,
    added: bool,
}

/// How log lines name a service: `service "arith"`, and the default
/// service (the empty name) as `the default service`, not `service ""`.
pub(crate) struct ServiceName<'a>(pub(crate) &'a str);

impl std::fmt::Display for ServiceName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            "" => f.write_str("the default service"),
            s => write!(f, "service {s:?}"),
        }
    }
}

/// foldhash with a random seed per map: about three times faster than
/// SipHash on short keys, and still seeded against crafted collisions.
type RandomState = foldhash::fast::RandomState;

/// The registry table, shared by cheap clones.
///
/// One lock guards the whole table; it is held only for bookkeeping (no
/// I/O; listings are printed and sorted after it is released, from a copy
/// of the addresses), so a heartbeat never waits long for it. Expired entries are never returned: each call first removes
/// entries whose deadline has passed, and a [`Sweeper`] removes them
/// promptly even when nobody calls.
///
/// ```
/// use regcenter::{ManualClock, Registry};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let reg = Registry::builder().default_ttl(Duration::from_secs(5)).clock(clock.clone()).build()?;
/// reg.put("", "tcp@127.0.0.1:7001")?;
/// assert_eq!(reg.alive(""), ["tcp@127.0.0.1:7001"]);
/// clock.advance(Duration::from_secs(5));
/// assert!(reg.alive("").is_empty());
/// # Ok::<(), regcenter::Error>(())
/// ```
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("default_ttl", &self.inner.default_ttl)
            .field("max_entries", &self.inner.max_entries)
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry with the defaults: TTL 5 s (bounds 1 s to 1 h), 100 000
    /// entries at most, the system clock.
    pub fn new() -> Registry {
        // The defaults are valid by construction.
        Registry::builder()
            .build()
            .expect("default registry settings are valid")
    }

    /// A builder for non-default settings.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::new()
    }

    /// Takes the table lock and expires what is due at `now`.
    fn locked(&self, now: Tick) -> Locked<'_> {
        let mut guard = self.inner.table.lock();
        guard.expire_due(now);
        Locked {
            inner: &self.inner,
            guard: Some(guard),
        }
    }

    /// Registers a callback told the services whose listing changed; returns
    /// its id for [`unsubscribe`](Registry::unsubscribe).
    pub(crate) fn subscribe(&self, notifier: Notifier) -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.inner.notifiers.lock().push((id, notifier));
        id
    }

    pub(crate) fn unsubscribe(&self, id: u64) {
        self.inner.notifiers.lock().retain(|(i, _)| *i != id);
    }

    /// Whether this table is recovering: a
    /// [`RegistryServer`](crate::RegistryServer) started serving it without
    /// restoring a snapshot, and its maximum TTL (the
    /// [`max_ttl`](RegistryBuilder::max_ttl) bound) has not passed since.
    /// Until then servers registered before the start may still be on their
    /// way back (a heartbeat may wait up to its TTL), so a listing may be
    /// short of servers that are alive; clients keep their last list beside
    /// it. Listings say so (`X-Myrpc-Recovering: true`, JSON
    /// `"recovering"`). A table never served, or
    /// [`restore`](Registry::restore)d, is not recovering.
    ///
    /// ```
    /// use regcenter::RegistryServer;
    ///
    /// // Started without a snapshot: servers may still be re-registering.
    /// let server = RegistryServer::start_local()?;
    /// assert!(server.registry().recovering());
    /// // A table that is not served by a server never is.
    /// assert!(!regcenter::Registry::new().recovering());
    /// server.shutdown()?;
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn recovering(&self) -> bool {
        let until = self.inner.recovery.load(Ordering::Relaxed);
        if until == table::NOT_RECOVERING || until == table::NEVER_SERVED {
            return false; // the usual case: no clock read
        }
        if self.inner.now() < until {
            return true;
        }
        // Over for good: later calls need not read the clock.
        let _ = self.inner.recovery.compare_exchange(
            until,
            table::NOT_RECOVERING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        false
    }

    /// How much longer the table recovers, if it does.
    pub(crate) fn recovery_left(&self) -> Option<Duration> {
        let until = self.inner.recovery.load(Ordering::Relaxed);
        if until == table::NOT_RECOVERING || until == table::NEVER_SERVED {
            return None;
        }
        let left = until.checked_sub(self.inner.now()).filter(|n| *n > 0)?;
        Some(Duration::from_nanos(left))
    }

    /// A server starts serving this table: unless a snapshot was restored
    /// into it (or it recovers already), it recovers for its maximum TTL
    /// from now.
    pub(crate) fn begin_recovery(&self) {
        let max_ttl =
            u64::try_from(self.inner.max_ttl.as_nanos()).expect("max_ttl is at most 72 h");
        let until = self.inner.now().saturating_add(max_ttl);
        let _ = self.inner.recovery.compare_exchange(
            table::NEVER_SERVED,
            until,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A snapshot was restored into this table, or it mirrors a shared
    /// store: it knows what it had, and is not recovering.
    pub(crate) fn recovered(&self) {
        self.inner
            .recovery
            .store(table::NOT_RECOVERING, Ordering::Relaxed);
    }

    /// The TTL applied when a server asks for `requested` (or for none).
    pub fn effective_ttl(&self, requested: Option<Duration>) -> Duration {
        match requested {
            None => self.inner.default_ttl,
            Some(t) => t.clamp(self.inner.min_ttl, self.inner.max_ttl),
        }
    }

    /// Registers `addr` under `service` (empty: the default service) with the
    /// default options, or renews it.
    ///
    /// # Errors
    ///
    /// As [`put_with`](Registry::put_with).
    pub fn put(&self, service: &str, addr: &str) -> Result<PutOutcome> {
        // A static: building and dropping an empty map per heartbeat showed
        // in its profile.
        static DEFAULTS: PutOptions = PutOptions {
            ttl: None,
            weight: 1,
            meta: BTreeMap::new(),
            status: None,
        };
        self.put_with(service, addr, &DEFAULTS)
    }

    /// Registers `addr` under `service`, or renews it.
    ///
    /// A renewal with the same weight, metadata and status (or none asked:
    /// see [`PutOptions::status`]) only moves the deadline and leaves the
    /// modify index alone, so watchers are not woken by heartbeats.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`], [`Error::InvalidAddr`] (also for an
    /// address a client cannot dial, see
    /// [`validate_dialable_addr`](crate::protocol::validate_dialable_addr),
    /// unless the registry was built with
    /// [`free_form_addresses`](RegistryBuilder::free_form_addresses)),
    /// [`Error::InvalidConfig`] for a weight or metadata out of bounds, and
    /// [`Error::Full`] for a new address when the registry is full. Nothing
    /// changes on error.
    pub fn put_with(&self, service: &str, addr: &str, opts: &PutOptions) -> Result<PutOutcome> {
        validate_service(service)?;
        let key = Key::checked(addr, !self.inner.free_form_addresses)?;
        opts.validate()?;
        let ttl = self.effective_ttl(opts.ttl);
        let now = self.inner.now();
        let mut locked = self.locked(now);
        let labels = Labels {
            weight: opts.weight,
            meta: &opts.meta,
            status: opts.status,
        };
        let put = self.put_locked(&mut locked, service, key, ttl, &labels, now)?;
        if !put.added {
            locked.stats.renewals += 1;
            locked.history.count(now, Event::Renewal, 1);
        }
        if put.changed && put.added {
            // Logged once the lock is released: a logger writes, and every
            // heartbeat would wait for it.
            drop(locked);
            log::info!("registered {addr} in {}", ServiceName(service));
        }
        Ok(PutOutcome {
            ttl,
            index: put.index,
            changed: put.changed,
        })
    }

    /// What [`put_with`](Registry::put_with) does under the lock, checked
    /// input given.
    fn put_locked(
        &self,
        t: &mut Locked<'_>,
        service: &str,
        key: Key<'_>,
        ttl: Duration,
        labels: &Labels<'_>,
        now: Tick,
    ) -> Result<Put> {
        let t = &mut **t;
        if let Some(svc) = t.services.get_mut(service)
            && let Some(i) = svc.entries.find(&key)
        {
            // Counted as a renewal by the caller that received one: a
            // change a shared store brings (`mirror`) is not.
            let (changed, queued) = svc.entries.renew(i, ttl, labels, now);
            if changed {
                t.counter += 1;
                svc.index = t.counter;
                let left = svc.entries.len();
                svc.log
                    .push(t.counter, changelog::Kind::Changed, key.owned(), left);
                svc.record(t.counter, Some(labels.meta), &mut t.retired);
                t.retired.extend(svc.invalidate());
                announce(&mut t.changed, &svc.name);
            }
            let index = svc.index;
            if queued && t.settle(service) {
                self.inner.wake.notify_all();
            }
            return Ok(Put {
                index,
                changed,
                added: false,
            });
        }
        if t.entries >= self.inner.max_entries {
            return Err(Error::Full {
                limit: self.inner.max_entries,
            });
        }
        t.stats.registrations += 1;
        t.history.count(now, Event::Registration, 1);
        let index = t.add(
            service,
            key,
            labels.meta,
            &self.inner.wake,
            |entries, key| entries.insert(key, ttl, labels, now),
        );
        Ok(Put {
            index,
            changed: true,
            added: true,
        })
    }

    #[cfg(feature = "etcd")]
    /// Applies a change a shared store (etcd, under `serve --etcd`) made
    /// at `revision`: `Some` puts the entry with these labels, `None`
    /// removes it. The entry never expires here, since the store decides
    /// expiry for every front-end at once; and the change takes the
    /// store's revision as its index (or the counter, if that is ahead), so
    /// front-ends of one store agree on indexes. The changes are applied
    /// under one lock, so that no listing shows part of them. Returns how
    /// many changed the listing; bad input changes nothing.
    pub(crate) fn mirror(&self, changes: &[Mirrored<'_>]) -> usize {
        let now = self.inner.now();
        // One lock for them all: a long-poll woken by the first change of a
        // revision would otherwise be answered the revision's index with
        // only part of it, and the rest would come under the same index.
        let mut locked = self.locked(now);
        let mut changed = 0;
        for &(revision, service, addr, labels) in changes {
            if validate_service(service).is_err() {
                continue;
            }
            let Ok(key) = Key::checked(addr, false) else {
                continue;
            };
            // The change's own increment lands on the revision.
            let target = locked.counter.max(revision);
            locked.counter = target.saturating_sub(1);
            let moved = match labels {
                Some((weight, meta, status)) => {
                    let labels = Labels {
                        weight: weight.clamp(1, MAX_WEIGHT),
                        meta,
                        status: Some(status),
                    };
                    self.put_locked(&mut locked, service, key, Duration::ZERO, &labels, now)
                        .is_ok_and(|p| p.changed)
                }
                None => {
                    let removed = locked.remove(service, &key);
                    if removed {
                        locked.stats.deregistrations += 1;
                        locked.history.deregistered(service, addr, now);
                    }
                    removed
                }
            };
            locked.counter = locked.counter.max(target);
            changed += usize::from(moved);
        }
        changed
    }

    #[cfg(feature = "etcd")]
    /// Moves the counter to the revision a shared store has reached, so
    /// that a listing of a service absent here reports it.
    pub(crate) fn mirror_reached(&self, revision: u64) {
        let mut t = self.inner.table.lock();
        t.counter = t.counter.max(revision);
    }

    #[cfg(feature = "etcd")]
    /// Raises the index of `service` to `index` when a client shows an
    /// index another front-end of the same store gave it, ahead of this
    /// one's for an unchanged listing (it was loaded at a later revision
    /// there, or saw a change this one saw as part of a reload). The store
    /// has been followed past `index` (the caller made sure), so the
    /// listing is the store's at `index`: saying so keeps every index a
    /// client sees growing, whichever front-end it asks. Long-polls parked
    /// below it are answered.
    pub(crate) fn mirror_raise(&self, service: &str, index: u64) {
        let now = self.inner.now();
        let mut locked = self.locked(now);
        let t = &mut *locked;
        if let Some(svc) = t.services.get_mut(service) {
            // Filtered listings too, each of which a client may bring an
            // index of from another front-end.
            svc.pairs.raise(index);
            if svc.index < index {
                svc.index = index;
                t.retired.extend(svc.invalidate());
            }
            announce(&mut t.changed, &svc.name);
        }
        t.vanished = t.vanished.max(index);
        t.counter = t.counter.max(index);
    }

    #[cfg(feature = "etcd")]
    /// Checks a put as [`put_with`](Registry::put_with) would, changing
    /// nothing.
    pub(crate) fn check_put(&self, service: &str, addr: &str, opts: &PutOptions) -> Result<()> {
        validate_service(service)?;
        Key::checked(addr, !self.inner.free_form_addresses)?;
        opts.validate()
    }

    #[cfg(feature = "etcd")]
    /// Whether `addr` in `service` has the labels `opts` asks for (a status
    /// left out keeps the one in force); `None` when it is not there.
    pub(crate) fn same_labels(&self, service: &str, addr: &str, opts: &PutOptions) -> Option<bool> {
        let key = Key::checked(addr, false).ok()?;
        let t = self.inner.table.lock();
        let svc = t.services.get(service)?;
        let e = svc.entries.view(svc.entries.find(&key)?);
        Some(
            e.weight() == opts.weight
                && *e.meta() == opts.meta
                && opts.status.is_none_or(|s| s == e.status()),
        )
    }

    #[cfg(feature = "etcd")]
    /// The weight, labels and status of `addr` in `service`, if it is there.
    pub(crate) fn labels_of(
        &self,
        service: &str,
        addr: &str,
    ) -> Option<(u32, BTreeMap<String, String>, Status)> {
        let key = Key::checked(addr, false).ok()?;
        let t = self.inner.table.lock();
        let svc = t.services.get(service)?;
        let e = svc.entries.view(svc.entries.find(&key)?);
        Some((e.weight(), e.meta().clone(), e.status()))
    }

    #[cfg(feature = "etcd")]
    /// The most entries the table holds.
    pub(crate) fn max_entries(&self) -> usize {
        self.inner.max_entries
    }

    #[cfg(feature = "etcd")]
    /// Counts a renewal that a front-end on a shared store kept to itself.
    pub(crate) fn count_renewal(&self) {
        let now = self.inner.now();
        let mut t = self.inner.table.lock();
        t.stats.renewals += 1;
        t.history.count(now, Event::Renewal, 1);
    }

    /// Renews `addr` in `service` if it is registered, and only then:
    /// what a UDP renewal does. The entry keeps the TTL, weight, metadata
    /// and status it was registered with; only its deadline moves, as with
    /// a [`put_with`](Registry::put_with) that changes nothing, and it
    /// counts as a renewal in [`stats`](Registry::stats). `Ok(false)` when
    /// the address is not registered there (never registered, expired,
    /// removed, or lost in a restart): nothing is created, and the server
    /// registers again with everything a registration carries.
    ///
    /// ```
    /// use regcenter::Registry;
    ///
    /// let reg = Registry::new();
    /// assert!(!reg.renew_existing("arith", "tcp@127.0.0.1:7001")?);
    /// assert!(reg.alive("arith").is_empty(), "nothing was created");
    /// reg.put("arith", "tcp@127.0.0.1:7001")?;
    /// assert!(reg.renew_existing("arith", "tcp@127.0.0.1:7001")?);
    /// assert_eq!(reg.stats().renewals, 1);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`] or [`Error::InvalidAddr`].
    pub fn renew_existing(&self, service: &str, addr: &str) -> Result<bool> {
        validate_service(service)?;
        // Any address a table may hold, as for `remove`: an entry restored
        // from a free-form snapshot renews too.
        let key = Key::checked(addr, false)?;
        let now = self.inner.now();
        let mut locked = self.locked(now);
        let t = &mut *locked;
        let Some(svc) = t.services.get_mut(service) else {
            return Ok(false);
        };
        let Some(i) = svc.entries.find(&key) else {
            return Ok(false);
        };
        svc.entries.touch(i, now);
        t.stats.renewals += 1;
        t.history.count(now, Event::Renewal, 1);
        Ok(true)
    }

    /// Removes `addr` from `service`; `Ok(false)` when it was not there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`] or [`Error::InvalidAddr`].
    pub fn remove(&self, service: &str, addr: &str) -> Result<bool> {
        validate_service(service)?;
        // Any address a table may hold can be removed, also one restored
        // from a snapshot of a free-form registry.
        let key = Key::checked(addr, false)?;
        let now = self.inner.now();
        let mut t = self.locked(now);
        let removed = t.remove(service, &key);
        if removed {
            t.stats.deregistrations += 1;
            t.history.deregistered(service, addr, now);
        }
        drop(t);
        if removed {
            log::info!("deregistered {addr} from {}", ServiceName(service));
        }
        Ok(removed)
    }

    /// The addresses of `service` a client may pick, sorted by byte order:
    /// the alive entries that are up. Draining ones are left out, as they
    /// are of the seed's `X-Myrpc-Servers` header and of text listings;
    /// [`instances`](Registry::instances) and [`entries`](Registry::entries)
    /// list them with their [`status`](EntryInfo::status).
    ///
    /// An invalid or unknown service has none.
    pub fn alive(&self, service: &str) -> Vec<String> {
        self.listing(service).addrs().to_vec()
    }

    /// The rendered listing of `service`, the addresses
    /// [`alive`](Registry::alive) lists: cheap to call, shared until the
    /// service changes.
    pub fn listing(&self, service: &str) -> Arc<Listing> {
        let now = self.inner.now();
        let (index, keys) = {
            let t = self.locked(now);
            match t.services.get(service) {
                Some(Service {
                    listing: Some(listing),
                    ..
                }) => return listing.clone(),
                Some(svc) => (
                    svc.index,
                    svc.entries
                        .iter()
                        .filter(|e| e.status() == Status::Up)
                        .map(|e| e.key())
                        .collect(),
                ),
                // An absent service reports the registry-wide counter: it is
                // at least the index the service had before it emptied out,
                // so a client never sees its index go backwards.
                None => (t.counter, Vec::<Key>::new()),
            }
        };
        // Printed and sorted without the lock: 40 ms at 100 000 entries.
        let listing = Arc::new(Listing::new(
            index,
            keys.iter().map(|k| k.to_string()).collect(),
        ));
        if let Some(svc) = self.inner.table.lock().services.get_mut(service)
            && svc.index == index
            && svc.listing.is_none()
        {
            svc.listing = Some(listing.clone());
        }
        listing
    }

    /// The modify index of `service` (see [`listing`](Registry::listing)).
    pub fn index(&self, service: &str) -> u64 {
        let now = self.inner.now();
        let t = self.locked(now);
        let counter = t.counter;
        t.services.get(service).map_or(counter, |s| s.index)
    }

    /// Counts of registrations, renewals, deregistrations and expiries.
    pub fn stats(&self) -> RegistryStats {
        let now = self.inner.now();
        let t = self.locked(now);
        RegistryStats {
            entries: t.entries,
            ..t.stats
        }
    }

    /// Alive entries per service, sorted by name.
    pub fn service_sizes(&self) -> Vec<(String, usize)> {
        let now = self.inner.now();
        let t = self.locked(now);
        let mut out: Vec<(String, usize)> = t
            .services
            .iter()
            .map(|(k, s)| (k.to_string(), s.entries.len()))
            .collect();
        out.sort_unstable();
        out
    }

    /// What the table reserves; see [`Footprint`].
    #[doc(hidden)]
    pub fn footprint(&self) -> Footprint {
        let t = self.inner.table.lock();
        let mut f = Footprint {
            entries: t.entries,
            services: t.services.len(),
            service_room: t.services.capacity(),
            ..Footprint::default()
        };
        for svc in t.services.values() {
            let room = svc.entries.room();
            f.slots += room.slots;
            f.places += room.places;
            f.text_bytes += room.text_bytes;
            f.queued += room.queued;
            f.queue_room += room.queue_room;
        }
        f
    }

    /// The registry-wide modify counter.
    pub fn counter(&self) -> u64 {
        self.inner.table.lock().counter
    }

    /// Number of alive entries across all services.
    pub fn len(&self) -> usize {
        let now = self.inner.now();
        let t = self.locked(now);
        t.entries
    }

    /// Whether no entry is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names of the services that have alive entries, sorted.
    pub fn services(&self) -> Vec<String> {
        let now = self.inner.now();
        let t = self.locked(now);
        let mut names: Vec<String> = t.services.keys().map(|k| k.to_string()).collect();
        names.sort_unstable();
        names
    }

    /// The modify index of `service` and its alive entries with their
    /// details, sorted by address: one consistent snapshot.
    pub fn instances(&self, service: &str) -> (u64, Vec<EntryInfo>) {
        let now = self.inner.now();
        let (index, cached, times) = {
            let t = self.locked(now);
            let Some(svc) = t.services.get(service) else {
                return (t.counter, Vec::new());
            };
            (svc.index, svc.details(), svc.times())
        };
        let details = self.settle_details(service, index, cached);
        (index, details.infos(service, &times, now))
    }

    /// The entries of `service` whose metadata holds every pair of `filter`
    /// (exact matches; not empty), sorted by address, and the index of
    /// that filtered listing: one consistent snapshot.
    ///
    /// The index is an index at or after the filtered listing's last
    /// change: for each label pair, the service keeps the latest index at
    /// which an entry carrying it registered, changed or left, and an entry
    /// that came into the listing, changed in it or left it carried every
    /// pair of the filter (`pairs.rs`).
    ///
    /// Why that is enough: every change to the filtered listing after an
    /// index N raises each pair of the filter above N, so an index not past
    /// N says the listing is the one a client had at N, and a long-poll
    /// parked on it misses nothing. A service that emptied out and left the
    /// table reports `Table::vanished`, at least its last index, and one
    /// created again starts its pairs there. An index past N without a
    /// visible change (an entry that came and went, a pair shared with
    /// entries the filter does not show) answers the same list early,
    /// never a stale one as new. And it never goes down: the index of a
    /// pair only grows, a pair shed passes its bound to its key's, and
    /// `vanished` passes every index of a service that left.
    ///
    /// Why not compare the filtered list at wake-up with the one a watcher
    /// parked on: a long-poll arrives with nothing but an index, so the
    /// registry must tell from the index alone whether the list changed
    /// since; and with the service's own index every change in another
    /// zone would look like one.
    pub(crate) fn matching(
        &self,
        service: &str,
        filter: &[(String, String)],
    ) -> (u64, Vec<EntryInfo>) {
        let now = self.inner.now();
        let (index, cached, times, matching) = {
            let t = self.locked(now);
            let Some(svc) = t.services.get(service) else {
                return (t.vanished, Vec::new());
            };
            (
                svc.index,
                svc.details(),
                svc.times(),
                svc.index_matching(filter),
            )
        };
        let details = self.settle_details(service, index, cached);
        (
            matching,
            details.infos_matching(service, &times, now, filter),
        )
    }

    /// The index of the filtered listing [`matching`](Registry::matching)
    /// answers: a lookup of each pair of `filter`.
    pub(crate) fn index_matching(&self, service: &str, filter: &[(String, String)]) -> u64 {
        let now = self.inner.now();
        let t = self.locked(now);
        let vanished = t.vanished;
        t.services
            .get(service)
            .map_or(vanished, |svc| svc.index_matching(filter))
    }

    /// What changed in `service` since its listing at index `since`: the
    /// entries added and changed (as they are now) and the addresses
    /// removed, at the service's current index; `None` when that cannot be
    /// told and the full listing must be sent instead: the service's
    /// change log no longer reaches back to `since` (more changes since
    /// than it holds, the service emptied out and came back, a restore),
    /// the service is absent, or `since` is past its index or the counter
    /// (an index from another registry, or from before a restart).
    ///
    /// A renewal is no change: the times of the entries (`expires_in`)
    /// move without a record, as they move without a new index.
    pub(crate) fn delta(&self, service: &str, since: u64) -> Option<Delta> {
        let now = self.inner.now();
        let t = self.locked(now);
        if since > t.counter {
            return None;
        }
        let svc = t.services.get(service)?;
        if since > svc.index {
            return None;
        }
        let changes = svc.log.since(since, &svc.entries)?;
        // O(the changes): a few lookups and copies under the lock.
        let info = |addr: String| -> EntryInfo {
            let bucket = svc
                .entries
                .find(&Key::new(&addr))
                .expect("the change log found it present");
            let e = svc.entries.view(bucket);
            let times = e.raw_times();
            EntryInfo {
                service: service.to_string(),
                weight: e.weight(),
                meta: e.meta().clone(),
                ttl: times.ttl(),
                expires_in: times
                    .deadline()
                    .map(|d| Duration::from_nanos(d.saturating_sub(now))),
                since_beat: Duration::from_nanos(now.saturating_sub(times.last_beat())),
                status: e.status(),
                addr,
            }
        };
        Some(Delta {
            index: svc.index,
            added: changes.added.into_iter().map(info).collect(),
            changed: changes.changed.into_iter().map(info).collect(),
            removed: changes.removed,
        })
    }

    /// The details from the cache, or built from `raw` without the lock and
    /// cached if the service has not changed meanwhile.
    fn settle_details(
        &self,
        service: &str,
        index: u64,
        cached: Result<Arc<Details>, Raw>,
    ) -> Arc<Details> {
        let raw = match cached {
            Ok(details) => return details,
            Err(raw) => raw,
        };
        let details = Arc::new(Details::new(raw));
        // Only into an empty place: replacing a cached one would free it
        // under the lock.
        if let Some(svc) = self.inner.table.lock().services.get_mut(service)
            && svc.index == index
            && svc.details.is_none()
        {
            svc.details = Some(details.clone());
        }
        details
    }

    /// Every alive entry with its details, sorted by service and address.
    pub fn entries(&self) -> Vec<EntryInfo> {
        let now = self.inner.now();
        type Taken = (Arc<str>, u64, Result<Arc<Details>, Raw>, Vec<Stamp>);
        let mut services: Vec<Taken> = {
            let t = self.locked(now);
            t.services
                .values()
                .map(|svc| (svc.name.clone(), svc.index, svc.details(), svc.times()))
                .collect()
        };
        services.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        services
            .into_iter()
            .flat_map(|(name, index, cached, times)| {
                let details = self.settle_details(&name, index, cached);
                details.infos(&name, &times, now)
            })
            .collect()
    }

    /// Removes every entry whose deadline has passed and returns how many.
    ///
    /// Every other call does this first, and a [`Sweeper`] does it on time;
    /// call it yourself after moving a [`ManualClock`](crate::ManualClock).
    pub fn sweep(&self) -> usize {
        let now = self.inner.now();
        let mut t = Locked {
            inner: &self.inner,
            guard: Some(self.inner.table.lock()),
        };
        t.expire_due(now)
    }
}

#[cfg(test)]
mod tests;
