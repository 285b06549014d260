//! The table behind a [`Registry`](crate::Registry): services, their
//! entries and modify indexes, the queue of expiries, and the caches readers
//! share (the rendered [`Listing`], the details behind [`EntryInfo`]), all
//! under one lock that [`Locked`] holds and releases before anything slow
//! (freeing, logging, telling watchers).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::changelog::{ChangeLog, Kind, LOG_LIMIT};
use super::entries::{Entries, Key, Stamp, Tick};
use super::pairs::Pairs;
use super::{RandomState, RegistryStats, ServiceName};
use crate::clock::Clock;
use crate::protocol::Status;

/// A service's alive servers that take new work (draining ones are left
/// out: this is what the seed's clients pick from) at one modify index,
/// rendered once per change and shared by reference.
#[derive(Debug)]
pub struct Listing {
    index: u64,
    addrs: Vec<String>,
    joined: String,
    text: String,
}

impl Listing {
    pub(super) fn new(index: u64, mut addrs: Vec<String>) -> Listing {
        addrs.sort_unstable();
        let joined = addrs.join(",");
        let mut text = String::with_capacity(joined.len() + 1);
        for a in &addrs {
            text.push_str(a);
            text.push('\n');
        }
        Listing {
            index,
            addrs,
            joined,
            text,
        }
    }

    /// The service's modify index this listing belongs to.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The alive addresses that are up, sorted by byte order.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The addresses comma-joined, as in the seed's `X-Myrpc-Servers` header.
    pub fn joined(&self) -> &str {
        &self.joined
    }

    /// The addresses one per line, each followed by `\n` (`?format=text`).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// One registered server as [`Registry::entries`](crate::Registry::entries)
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The service name (empty for the default service).
    pub service: String,
    /// The server's address.
    pub addr: String,
    /// The weight for weighted selection.
    pub weight: u32,
    /// The metadata labels.
    pub meta: BTreeMap<String, String>,
    /// The TTL in force (zero: never expires).
    pub ttl: Duration,
    /// Time left before expiry, `None` when it never expires.
    pub expires_in: Option<Duration>,
    /// Time since the last register or renewal.
    pub since_beat: Duration,
    /// Whether it takes new work; a draining entry is left out of
    /// [`Registry::alive`](crate::Registry::alive) and of the seed's and
    /// text listings.
    pub status: Status,
}

/// What the clones of a [`Registry`](crate::Registry) share.
pub(super) struct Inner {
    pub(super) table: Mutex<Table>,
    /// Wakes the sweeper when an earlier deadline is scheduled or it must stop.
    pub(super) wake: Condvar,
    pub(super) default_ttl: Duration,
    pub(super) min_ttl: Duration,
    pub(super) max_ttl: Duration,
    pub(super) max_entries: usize,
    /// Registrations take any visible address, not only `proto@rest`.
    pub(super) free_form_addresses: bool,
    /// Table times are nanoseconds since the registry was built.
    pub(super) time: Time,
    /// Called with the services that changed, after the table lock is
    /// released (the server answers its parked watchers there).
    pub(super) notifiers: Mutex<Vec<(u64, Notifier)>>,
    /// Until when the table is recovering, a table time (never 0: the
    /// maximum TTL is above zero), or [`NEVER_SERVED`] or
    /// [`NOT_RECOVERING`] (see
    /// [`Registry::recovering`](crate::Registry::recovering)).
    pub(super) recovery: std::sync::atomic::AtomicU64,
}

/// [`Inner::recovery`] of a table no server started on yet, nor restored.
pub(super) const NEVER_SERVED: u64 = 0;
/// [`Inner::recovery`] of a table that is not recovering: restored from a
/// snapshot, or past its deadline.
pub(super) const NOT_RECOVERING: u64 = u64::MAX;

/// A callback told which services changed.
pub(crate) type Notifier = Arc<dyn Fn(&[Arc<str>]) + Send + Sync>;

/// The table lock, plus the changes to announce once it is released.
pub(super) struct Locked<'a> {
    pub(super) inner: &'a Inner,
    pub(super) guard: Option<MutexGuard<'a, Table>>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Table;
    fn deref(&self) -> &Table {
        self.guard.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        self.guard.as_mut().expect("held until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if guard.changed.is_empty() && guard.retired.is_empty() && guard.expired.is_empty() {
            return; // a heartbeat: nothing to announce, log or free
        }
        let changed = std::mem::take(&mut guard.changed);
        let retired = std::mem::take(&mut guard.retired);
        let expired = std::mem::take(&mut guard.expired);
        drop(guard);
        drop(retired);
        log_expired(&expired);
        self.inner.notify(&changed);
    }
}

/// Where the table's time comes from.
pub(super) enum Time {
    System {
        base: u64,
    },
    Custom {
        clock: Arc<dyn Clock>,
        epoch: Instant,
    },
}

impl Inner {
    pub(super) fn now(&self) -> Tick {
        match &self.time {
            Time::System { base } => crate::clock::system_nanos().saturating_sub(*base),
            Time::Custom { clock, epoch } => {
                clock.now().saturating_duration_since(*epoch).as_nanos() as Tick
            }
        }
    }

    pub(super) fn notify(&self, changed: &[Arc<str>]) {
        if changed.is_empty() {
            return;
        }
        let notifiers: Vec<Notifier> = self
            .notifiers
            .lock()
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        for n in notifiers {
            n(changed);
        }
    }
}

#[derive(Default)]
pub(super) struct Table {
    /// Services changed since the lock was taken, announced on release.
    pub(super) changed: Vec<Arc<str>>,
    /// What a change replaced, freed after the lock is released: freeing
    /// the listing and details of 100 000 entries takes milliseconds, and
    /// every heartbeat would wait for it.
    pub(super) retired: Vec<Box<dyn Send>>,
    /// Entries expired since the lock was taken, logged on release.
    pub(super) expired: Vec<(Arc<str>, Key<'static>)>,
    /// Registry-wide modify counter (docs/PROTOCOL.md, "Modify index").
    pub(super) counter: u64,
    /// The latest index at which a service emptied out and left the table
    /// with what it knew of its filtered listings (or the counter a
    /// restore started from): the index of every filtered listing of an
    /// absent service, and where a new service's knowledge starts.
    pub(super) vanished: u64,
    pub(super) entries: usize,
    /// Cloned into each service: one seed per registry.
    hasher: RandomState,
    pub(super) services: HashMap<Arc<str>, Service, RandomState>,
    /// Each service with queued expiries at its earliest, the soonest
    /// first: what expiry walks and the sweeper waits for. Each service
    /// keeps its own queue (see `entries`), one item an entry.
    pub(super) soonest: BTreeSet<(Tick, Arc<str>)>,
    pub(super) stats: RegistryStats,
    /// The last removals and the counts per second, for the status page.
    pub(super) history: super::history::History,
}

pub(super) struct Service {
    pub(super) name: Arc<str>,
    pub(super) index: u64,
    pub(super) entries: Entries,
    /// Its place in [`Table::soonest`]: the earliest queued expiry.
    due: Option<Tick>,
    /// `None` after a change: rebuilt by the next reader.
    pub(super) listing: Option<Arc<Listing>>,
    /// Likewise, for readers of the details (JSON listings, status page).
    pub(super) details: Option<Arc<Details>>,
    /// The indexes of its filtered listings.
    pub(super) pairs: Pairs,
    /// Its last changes, for delta long-polls.
    pub(super) log: ChangeLog,
}

impl Service {
    /// After a change of membership or labels; returns the old caches,
    /// if any, for [`Table::retired`].
    pub(super) fn invalidate(&mut self) -> Option<Box<dyn Send>> {
        if self.listing.is_none() && self.details.is_none() {
            return None; // nothing to free, nothing to allocate
        }
        Some(Box::new((self.listing.take(), self.details.take())))
    }

    /// Notes for its filtered listings a change at `index`: the labels of
    /// an entry that registered or changed (`labels`, if any), and those of
    /// the entries that left or were relabelled. The labels that left are
    /// freed after the lock, with what a change replaced.
    pub(super) fn record(
        &mut self,
        index: u64,
        labels: Option<&BTreeMap<String, String>>,
        retired: &mut Vec<Box<dyn Send>>,
    ) {
        let gone = self.entries.take_gone();
        let entries = self.entries.len();
        let labels = labels.filter(|l| !l.is_empty());
        if labels.is_some() || !gone.is_empty() {
            self.pairs
                .note(labels.into_iter().chain(&gone), index, entries);
        }
        if !gone.is_empty() {
            retired.push(Box::new(gone));
        }
    }

    /// The index of the listing of the entries whose labels hold every
    /// pair of `filter` (not empty); see `pairs.rs`.
    pub(super) fn index_matching(&self, filter: &[(String, String)]) -> u64 {
        self.pairs.bound(filter)
    }

    /// What renewals move, for every entry in the table's order: one
    /// sequential pass, so the lock is held briefly.
    pub(super) fn times(&self) -> Vec<Stamp> {
        self.entries.iter().map(|e| e.raw_times()).collect()
    }

    /// The cached details, or what building them needs. Kept lean: at
    /// 100 000 entries, copying an empty label map per entry took 3 ms of
    /// lock time.
    pub(super) fn details(&self) -> Result<Arc<Details>, Raw> {
        if let Some(d) = &self.details {
            return Ok(d.clone());
        }
        let mut raw = Raw {
            rows: Vec::with_capacity(self.entries.len()),
            labels: Vec::new(),
        };
        for (at, e) in self.entries.iter().enumerate() {
            raw.rows.push((e.key(), e.weight(), e.status()));
            if !e.meta().is_empty() {
                raw.labels.push((at, e.meta().clone()));
            }
        }
        Err(raw)
    }
}

/// Addresses and weights in the table's order, and the labels of those
/// that have any: copied out to build [`Details`] without the lock.
pub(super) struct Raw {
    rows: Vec<(Key<'static>, u32, Status)>,
    labels: Vec<(usize, BTreeMap<String, String>)>,
}

/// A service's entries sorted by address with what only changes with its
/// index, built once per change: a JSON listing of 100 000 entries held
/// the table lock for 60 ms when it was built per request.
pub(super) struct Details {
    pub(super) rows: Vec<DetailRow>,
}

pub(super) struct DetailRow {
    pub(super) addr: String,
    pub(super) weight: u32,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) status: Status,
    /// Position in the table's iteration order, which only inserts and
    /// removals change, and those invalidate the details.
    pub(super) at: usize,
}

impl Details {
    /// From rows in the table's order.
    pub(super) fn new(raw: Raw) -> Details {
        let mut rows: Vec<DetailRow> = raw
            .rows
            .into_iter()
            .enumerate()
            .map(|(at, (key, weight, status))| DetailRow {
                addr: key.to_string(),
                weight,
                meta: BTreeMap::new(),
                status,
                at,
            })
            .collect();
        for (at, meta) in raw.labels {
            rows[at].meta = meta;
        }
        rows.sort_unstable_by(|a, b| a.addr.cmp(&b.addr));
        Details { rows }
    }

    /// The entries as [`Registry::entries`](crate::Registry::entries)
    /// reports them at `now`.
    pub(super) fn infos(&self, service: &str, times: &[Stamp], now: Tick) -> Vec<EntryInfo> {
        self.infos_matching(service, times, now, &[])
    }

    /// The entries whose labels hold every pair of `filter`, as
    /// [`infos`](Details::infos) reports them.
    pub(super) fn infos_matching(
        &self,
        service: &str,
        times: &[Stamp],
        now: Tick,
        filter: &[(String, String)],
    ) -> Vec<EntryInfo> {
        debug_assert_eq!(
            times.len(),
            self.rows.len(),
            "invalidated on every insert and removal"
        );
        self.rows
            .iter()
            .filter(|r| matches(&r.meta, filter))
            .map(|r| {
                let t = times[r.at];
                EntryInfo {
                    service: service.to_string(),
                    addr: r.addr.clone(),
                    weight: r.weight,
                    meta: r.meta.clone(),
                    ttl: t.ttl(),
                    expires_in: t
                        .deadline()
                        .map(|d| Duration::from_nanos(d.saturating_sub(now))),
                    since_beat: Duration::from_nanos(now.saturating_sub(t.last_beat())),
                    status: r.status,
                }
            })
            .collect()
    }
}

/// Whether `meta` holds every pair of `filter` (exact match).
fn matches(meta: &BTreeMap<String, String>, filter: &[(String, String)]) -> bool {
    filter.iter().all(|(k, v)| meta.get(k) == Some(v))
}

/// Room of the service map below which it is not shrunk.
const MIN_SERVICE_ROOM: usize = 1024;
/// Expiries logged one line each at `info`; beyond, one summary line (and
/// a line each at `debug`).
const EXPIRY_LINES: usize = 100;

/// Logs what expired, after the table lock is released: at 100 000 expiries
/// a line each took the lock for as long as the logger took to write them.
pub(super) fn log_expired(expired: &[(Arc<str>, Key<'static>)]) {
    if expired.len() <= EXPIRY_LINES {
        for (service, addr) in expired {
            log::info!("expired {addr} from {}", ServiceName(service));
        }
        return;
    }
    let mut per_service: HashMap<&str, usize> = HashMap::new();
    for (service, _) in expired {
        *per_service.entry(service).or_default() += 1;
    }
    let mut counts: Vec<(&str, usize)> = per_service.into_iter().collect();
    counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut most: Vec<String> = counts
        .iter()
        .take(5)
        .map(|(s, n)| format!("{n} from {}", ServiceName(s)))
        .collect();
    if counts.len() > 5 {
        most.push(format!("{} more services", counts.len() - 5));
    }
    log::info!(
        "expired {} entries: {} (set the log level to debug for each address)",
        expired.len(),
        most.join(", ")
    );
    if log::log_enabled!(log::Level::Debug) {
        for (service, addr) in expired {
            log::debug!("expired {addr} from {}", ServiceName(service));
        }
    }
}

/// Adds `service` to the services changed, once for a run of changes to
/// it (a mass expiry changes one service 100 000 times).
pub(super) fn announce(changed: &mut Vec<Arc<str>>, service: &Arc<str>) {
    if changed.last().is_none_or(|c| !Arc::ptr_eq(c, service)) {
        changed.push(service.clone());
    }
}

impl Table {
    /// Files `service` in [`soonest`](Table::soonest) at its earliest
    /// queued expiry after its queue changed, and lets it go when it has
    /// emptied out. Returns whether it is now the soonest of all (then the
    /// sweeper must be woken).
    pub(super) fn settle(&mut self, service: &str) -> bool {
        let Some(svc) = self.services.get_mut(service) else {
            return false;
        };
        let next = svc.entries.next_due();
        let mut soonest = false;
        if next != svc.due {
            if let Some(old) = svc.due {
                self.soonest.remove(&(old, svc.name.clone()));
            }
            if let Some(at) = next {
                soonest = self.soonest.first().is_none_or(|(first, _)| at < *first);
                self.soonest.insert((at, svc.name.clone()));
            }
            svc.due = next;
        }
        if svc.entries.is_empty() {
            if let Some(gone) = self.services.remove(service) {
                // Its departures go with it: every filtered listing of it
                // reports this index from now on (see `vanished`).
                self.vanished = self.vanished.max(gone.index);
                self.retired.push(Box::new(gone));
            }
            // Services that came and went leave no room behind.
            let room = self.services.capacity();
            if room > MIN_SERVICE_ROOM && self.services.len() * 4 <= room {
                self.services.shrink_to(self.services.len() * 2);
            }
        }
        soonest
    }

    /// Adds an absent entry labelled `meta` with `insert`, which queues its
    /// expiry and returns its deadline: a new index for its service, the
    /// caches retired, the change announced. Returns the index.
    pub(super) fn add<'k>(
        &mut self,
        service: &str,
        key: Key<'k>,
        meta: &BTreeMap<String, String>,
        wake: &Condvar,
        insert: impl FnOnce(&mut Entries, Key<'k>) -> Option<Tick>,
    ) -> u64 {
        self.counter += 1;
        self.entries += 1;
        let index = self.counter;
        let svc = self.service_mut(service);
        svc.index = index;
        let old = svc.invalidate();
        let logged = key.owned();
        let deadline = insert(&mut svc.entries, key);
        svc.log.push(index, Kind::Added, logged, svc.entries.len());
        // A new entry replaced nothing: nothing to retire but `old`.
        let mut retired = Vec::new();
        svc.record(index, Some(meta), &mut retired);
        let name = svc.name.clone();
        self.retired.extend(old);
        self.retired.append(&mut retired);
        announce(&mut self.changed, &name);
        if deadline.is_some() && self.settle(service) {
            wake.notify_all();
        }
        index
    }

    /// The service named `name`, created empty when absent.
    fn service_mut(&mut self, name: &str) -> &mut Service {
        if !self.services.contains_key(name) {
            let name: Arc<str> = Arc::from(name);
            let svc = Service {
                name: name.clone(),
                index: 0,
                entries: Entries::new(self.hasher.clone()),
                due: None,
                listing: None,
                details: None,
                // What it may have had before it was created is unknown
                // past the last time a service left the table.
                pairs: Pairs::new(self.hasher.clone(), self.vanished),
                // Created by the change at the counter: what came before
                // is unknown, even at the index just below.
                log: ChangeLog::new(self.counter),
            };
            self.services.insert(name, svc);
        }
        self.services.get_mut(name).expect("inserted above")
    }

    pub(super) fn remove(&mut self, service: &str, addr: &Key) -> bool {
        let Some(svc) = self.services.get_mut(service) else {
            return false;
        };
        if !svc.entries.remove(addr) {
            return false;
        }
        let at = self.counter + 1;
        svc.log
            .push(at, Kind::Removed, addr.owned(), svc.entries.len());
        self.removed(service, 1);
        true
    }

    /// What follows the removal of `n` entries of `service`: a new index,
    /// the caches retired, the change announced, the service filed again
    /// for expiry, or let go when it emptied out.
    fn removed(&mut self, service: &str, n: usize) {
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        self.entries -= n;
        self.counter += n as u64;
        announce(&mut self.changed, &svc.name);
        svc.index = self.counter;
        svc.record(self.counter, None, &mut self.retired);
        self.retired.extend(svc.invalidate());
        // Only ever later: the sweeper need not be woken.
        self.settle(service);
    }

    /// Moves the counter to at least `floor` (a restore), and forgets the
    /// history of filtered listings below it: changes a restart lost are
    /// unknown, so a filtered long-poll from before is answered at once.
    pub(super) fn raise_counter(&mut self, floor: u64) {
        self.counter = self.counter.max(floor);
        self.vanished = self.vanished.max(self.counter);
        for svc in self.services.values_mut() {
            svc.pairs.raise(self.counter);
            svc.log.raise(self.counter);
        }
    }

    /// Expires every entry whose deadline has passed, service by service
    /// in the order of their earliest expiry; returns how many.
    pub(super) fn expire_due(&mut self, now: Tick) -> usize {
        let mut total = 0;
        while let Some((at, name)) = self.soonest.first() {
            if *at > now {
                break;
            }
            let name = name.clone();
            let Some(svc) = self.services.get_mut(&*name) else {
                // Not reached: a service leaves `soonest` before the table.
                self.soonest.pop_first();
                continue;
            };
            let log = &mut self.expired;
            let n = svc
                .entries
                .expire(now, |addr| log.push((name.clone(), addr)));
            if n == 0 {
                // Renewals only: the items moved to later deadlines.
                self.settle(&name);
                continue;
            }
            // The removals' index, as `removed` gives it; a run longer
            // than any log is not copied, only noted.
            let at = self.counter + n as u64;
            if n > LOG_LIMIT {
                svc.log.overflow(at);
            } else {
                let left = svc.entries.len();
                for (_, key) in &self.expired[self.expired.len() - n..] {
                    svc.log.push(at, Kind::Removed, key.clone(), left);
                }
            }
            self.stats.expiries += n as u64;
            self.history.expired(&self.expired, n, now);
            self.removed(&name, n);
            total += n;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::registry::tests::{S, registry};
    use crate::registry::{PutOptions, Registry};

    #[test]
    fn the_listing_is_shared_until_the_service_changes() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        reg.put("", "a").unwrap();
        let l1 = reg.listing("");
        reg.put("", "a").unwrap(); // renewal
        assert!(Arc::ptr_eq(&l1, &reg.listing("")));
        reg.put("", "b").unwrap();
        assert!(!Arc::ptr_eq(&l1, &reg.listing("")));
    }

    #[test]
    fn details_follow_renewals_and_changes_while_cached() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        for a in ["c", "a", "b"] {
            reg.put("svc", a).unwrap();
        }
        let addrs = |reg: &Registry| -> Vec<String> {
            reg.instances("svc").1.into_iter().map(|e| e.addr).collect()
        };
        assert_eq!(addrs(&reg), ["a", "b", "c"]);
        clock.advance(2 * S);
        // A renewal changes no index, so the cached details stay; the times
        // are read afresh.
        reg.put_with("svc", "b", &PutOptions::new().ttl(10 * S))
            .unwrap();
        let (_, list) = reg.instances("svc");
        let b = &list[1];
        assert_eq!(
            (b.addr.as_str(), b.ttl, b.expires_in),
            ("b", 10 * S, Some(10 * S))
        );
        assert_eq!(
            (list[0].expires_in, list[0].since_beat),
            (Some(3 * S), 2 * S)
        );
        // Membership and labels do change them.
        reg.put_with("svc", "a", &PutOptions::new().weight(7))
            .unwrap();
        assert_eq!(reg.instances("svc").1[0].weight, 7);
        reg.remove("svc", "a").unwrap();
        reg.put("svc", "d").unwrap();
        assert_eq!(addrs(&reg), ["b", "c", "d"]);
        reg.put("other", "z").unwrap();
        let all: Vec<(String, String)> = reg
            .entries()
            .into_iter()
            .map(|e| (e.service, e.addr))
            .collect();
        let names = [("other", "z"), ("svc", "b"), ("svc", "c"), ("svc", "d")];
        let expected: Vec<(String, String)> = names
            .iter()
            .map(|(s, a)| (s.to_string(), a.to_string()))
            .collect();
        assert_eq!(all, expected);
    }

    /// Log lines as a test sees them, each with whether the table lock of
    /// the registry its thread watches was held when it was written.
    mod capture {
        use std::cell::RefCell;

        use super::Registry;

        pub(super) type Line = (log::Level, String, bool);

        thread_local! {
            static WATCHED: RefCell<Option<(Registry, Vec<Line>)>> = const { RefCell::new(None) };
        }

        struct Capture;

        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata) -> bool {
                WATCHED.with(|w| w.borrow().is_some())
            }

            fn log(&self, r: &log::Record) {
                WATCHED.with(|w| {
                    if let Some((reg, lines)) = &mut *w.borrow_mut() {
                        let locked = reg.inner.table.is_locked();
                        lines.push((r.level(), r.args().to_string(), locked));
                    }
                });
            }

            fn flush(&self) {}
        }

        /// What `f` logs on this thread, all levels. Other tests' lines
        /// (their threads watch nothing) are dropped.
        pub(super) fn watch(reg: &Registry, f: impl FnOnce()) -> Vec<Line> {
            static CAPTURE: Capture = Capture;
            static INSTALL: std::sync::Once = std::sync::Once::new();
            INSTALL.call_once(|| {
                log::set_logger(&CAPTURE).expect("no other logger in these tests");
                log::set_max_level(log::LevelFilter::Trace);
            });
            WATCHED.with(|w| *w.borrow_mut() = Some((reg.clone(), Vec::new())));
            f();
            WATCHED.with(|w| w.borrow_mut().take().map(|(_, l)| l).unwrap_or_default())
        }
    }

    #[test]
    fn log_lines_are_written_after_the_table_lock_is_released() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        let lines = capture::watch(&reg, || {
            reg.put("svc", "a").unwrap();
            assert!(reg.remove("svc", "a").unwrap());
            for i in 0..150 {
                reg.put("svc", &format!("m{i}")).unwrap();
            }
            reg.put("other", "o").unwrap();
            clock.advance(5 * S);
            assert_eq!(reg.sweep(), 151);
            for i in 0..3 {
                reg.put("few", &format!("f{i}")).unwrap();
            }
            clock.advance(5 * S);
            assert_eq!(reg.len(), 0, "expired by the call itself");
        });
        let under_lock: Vec<&String> = lines.iter().filter(|l| l.2).map(|l| &l.1).collect();
        assert!(
            under_lock.is_empty(),
            "logged under the lock: {under_lock:?}"
        );
        let at = |level| -> Vec<&str> {
            lines
                .iter()
                .filter(|l| l.0 == level)
                .map(|l| l.1.as_str())
                .collect()
        };
        let info = at(log::Level::Info);
        assert_eq!(info.len(), 1 + 1 + 150 + 1 + 1 + 3 + 3, "{info:#?}");
        assert_eq!(info[1], r#"deregistered a from service "svc""#);
        assert_eq!(info[0], r#"registered a in service "svc""#);
        // Past 100 expiries at once, one line says what expired.
        assert_eq!(
            info[153],
            r#"expired 151 entries: 150 from service "svc", 1 from service "other" (set the log level to debug for each address)"#
        );
        // Equal deadlines expire in no particular order.
        let mut few = info[157..].to_vec();
        few.sort_unstable();
        let want = ["f0", "f1", "f2"].map(|a| format!("expired {a} from service \"few\""));
        assert_eq!(few, want);
        let debug = at(log::Level::Debug);
        assert_eq!(debug.len(), 151, "{debug:#?}");
        assert!(
            debug.contains(&r#"expired m42 from service "svc""#),
            "{debug:#?}"
        );
    }
}
