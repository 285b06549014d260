//! The registry table: entries, TTLs, the modify index, expiry.

mod entries;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

pub use entries::TTL_LIMIT;
use entries::{Entries, Key, Stamp, Tick};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::protocol::{format_duration, validate_addr, validate_service};

/// foldhash with a random seed per map: about three times faster than
/// SipHash on short keys, and still seeded against crafted collisions.
type RandomState = foldhash::fast::RandomState;

/// Default TTL of an entry, as in the seed (`defaultTimeout = 5 * time.Second`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Default lower bound for a TTL a server asks for.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
/// Default upper bound for a TTL a server asks for.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);
/// Default cap on the number of entries in one registry.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Largest accepted weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Largest accepted metadata, counting the bytes of every key and value.
pub const MAX_META_BYTES: usize = 1024;

/// What a server announces besides its address.
///
/// ```
/// use regcenter::PutOptions;
/// use std::time::Duration;
///
/// let opts = PutOptions::new().ttl(Duration::from_secs(10)).weight(3).meta("zone", "a");
/// assert_eq!(opts.weight_value(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOptions {
    ttl: Option<Duration>,
    weight: u32,
    meta: BTreeMap<String, String>,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            ttl: None,
            weight: 1,
            meta: BTreeMap::new(),
        }
    }
}

impl PutOptions {
    /// Default options: the registry's default TTL, weight 1, no metadata.
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    /// The TTL to ask for; the registry clamps it to its bounds. Defaults to
    /// the registry's default TTL.
    pub fn ttl(mut self, ttl: Duration) -> PutOptions {
        self.ttl = Some(ttl);
        self
    }

    /// The weight for weighted selection, 1 to 10 000. Defaults to 1.
    pub fn weight(mut self, weight: u32) -> PutOptions {
        self.weight = weight;
        self
    }

    /// Adds a metadata label, such as a zone or a version. Defaults to none.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> PutOptions {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// The TTL asked for, if any.
    pub fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }

    /// The weight.
    pub fn weight_value(&self) -> u32 {
        self.weight
    }

    /// The metadata labels.
    pub fn meta_map(&self) -> &BTreeMap<String, String> {
        &self.meta
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(Error::config(
                "weight",
                format!("{} is outside 1..=10000", self.weight),
            ));
        }
        let bytes: usize = self.meta.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if bytes > MAX_META_BYTES {
            return Err(Error::config(
                "meta",
                format!("{bytes} bytes is over the limit of {MAX_META_BYTES}"),
            ));
        }
        if self.meta.keys().any(String::is_empty) {
            return Err(Error::config("meta", "a key is empty"));
        }
        Ok(())
    }
}

/// What a [`Registry::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// The TTL in force for the entry (zero: it never expires).
    pub ttl: Duration,
    /// The service's modify index after the put.
    pub index: u64,
    /// Whether the put changed the listing (a new address, or a new weight
    /// or metadata); `false` for a plain renewal.
    pub changed: bool,
}

/// A service's alive servers at one modify index, rendered once per change
/// and shared by reference.
#[derive(Debug)]
pub struct Listing {
    index: u64,
    addrs: Vec<String>,
    joined: String,
    text: String,
}

impl Listing {
    fn new(index: u64, mut addrs: Vec<String>) -> Listing {
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

    /// The alive addresses, sorted by byte order.
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

/// Builds a [`Registry`] with non-default TTLs, limits or clock.
#[derive(Clone)]
#[must_use]
pub struct RegistryBuilder {
    default_ttl: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    max_entries: usize,
    /// `None`: the system clock, read without building `Instant`s.
    clock: Option<Arc<dyn Clock>>,
}

impl RegistryBuilder {
    /// TTL of an entry whose server asks for none; zero means such entries
    /// never expire, as the seed's `timeout = 0`. Defaults to 5 s.
    pub fn default_ttl(mut self, ttl: Duration) -> RegistryBuilder {
        self.default_ttl = ttl;
        self
    }

    /// Smallest TTL a server may ask for; smaller requests are raised to it.
    /// Defaults to 1 s.
    pub fn min_ttl(mut self, ttl: Duration) -> RegistryBuilder {
        self.min_ttl = ttl;
        self
    }

    /// Largest TTL a server may ask for; larger requests are lowered to it.
    /// Defaults to 1 h; at most [`TTL_LIMIT`] (72 h).
    pub fn max_ttl(mut self, ttl: Duration) -> RegistryBuilder {
        self.max_ttl = ttl;
        self
    }

    /// Most entries the registry holds across all services; a new address
    /// beyond it is refused with [`Error::Full`]. Defaults to 100 000.
    pub fn max_entries(mut self, max: usize) -> RegistryBuilder {
        self.max_entries = max;
        self
    }

    /// The clock that decides expiry. Defaults to
    /// [`SystemClock`](crate::SystemClock).
    pub fn clock(mut self, clock: impl Clock) -> RegistryBuilder {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Builds the registry.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `min_ttl` is zero or above `max_ttl`,
    /// when `max_ttl` is above [`TTL_LIMIT`], when a non-zero `default_ttl`
    /// lies outside the bounds, or when `max_entries` is zero or above
    /// `u32::MAX`.
    pub fn build(self) -> Result<Registry> {
        if self.min_ttl.is_zero() {
            return Err(Error::config(
                "min_ttl",
                "must be above zero; a zero default TTL is how entries are made permanent",
            ));
        }
        if self.min_ttl > self.max_ttl {
            return Err(Error::config(
                "min_ttl",
                format!(
                    "{} is above max_ttl {}",
                    format_duration(self.min_ttl),
                    format_duration(self.max_ttl)
                ),
            ));
        }
        if self.max_ttl > TTL_LIMIT {
            return Err(Error::config(
                "max_ttl",
                format!(
                    "{} is above the limit of {}; a zero default TTL makes entries permanent",
                    format_duration(self.max_ttl),
                    format_duration(TTL_LIMIT)
                ),
            ));
        }
        if !self.default_ttl.is_zero()
            && (self.default_ttl < self.min_ttl || self.default_ttl > self.max_ttl)
        {
            return Err(Error::config(
                "ttl",
                format!(
                    "{} is outside the bounds {}..={}",
                    format_duration(self.default_ttl),
                    format_duration(self.min_ttl),
                    format_duration(self.max_ttl)
                ),
            ));
        }
        if self.max_entries == 0 {
            return Err(Error::config("max_entries", "must be at least 1"));
        }
        if u32::try_from(self.max_entries).is_err() {
            return Err(Error::config(
                "max_entries",
                format!("{} is above the limit of {}", self.max_entries, u32::MAX),
            ));
        }
        Ok(Registry {
            inner: Arc::new(Inner {
                table: Mutex::new(Table::default()),
                wake: Condvar::new(),
                default_ttl: self.default_ttl,
                min_ttl: self.min_ttl,
                max_ttl: self.max_ttl,
                max_entries: self.max_entries,
                time: match self.clock {
                    None => Time::System {
                        base: crate::clock::system_nanos(),
                    },
                    Some(clock) => Time::Custom {
                        epoch: clock.now(),
                        clock,
                    },
                },
                notifiers: Mutex::new(Vec::new()),
            }),
        })
    }
}

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

struct Inner {
    table: Mutex<Table>,
    /// Wakes the sweeper when an earlier deadline is scheduled or it must stop.
    wake: Condvar,
    default_ttl: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    max_entries: usize,
    /// Table times are nanoseconds since the registry was built.
    time: Time,
    /// Called with the services that changed, after the table lock is
    /// released (the server answers its parked watchers there).
    notifiers: Mutex<Vec<(u64, Notifier)>>,
}

/// A callback told which services changed.
pub(crate) type Notifier = Arc<dyn Fn(&[Arc<str>]) + Send + Sync>;

/// The table lock, plus the changes to announce once it is released.
struct Locked<'a> {
    inner: &'a Inner,
    guard: Option<MutexGuard<'a, Table>>,
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

enum Time {
    System {
        base: u64,
    },
    Custom {
        clock: Arc<dyn Clock>,
        epoch: Instant,
    },
}

impl Inner {
    fn now(&self) -> Tick {
        match &self.time {
            Time::System { base } => crate::clock::system_nanos().saturating_sub(*base),
            Time::Custom { clock, epoch } => {
                clock.now().saturating_duration_since(*epoch).as_nanos() as Tick
            }
        }
    }

    fn notify(&self, changed: &[Arc<str>]) {
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
struct Table {
    /// Services changed since the lock was taken, announced on release.
    changed: Vec<Arc<str>>,
    /// What a change replaced, freed after the lock is released: freeing
    /// the listing and details of 100 000 entries takes milliseconds, and
    /// every heartbeat would wait for it.
    retired: Vec<Box<dyn Send>>,
    /// Entries expired since the lock was taken, logged on release.
    expired: Vec<(Arc<str>, Key<'static>)>,
    /// Registry-wide modify counter (DESIGN.md, "Modify index").
    counter: u64,
    entries: usize,
    /// Cloned into each service: one seed per registry.
    hasher: RandomState,
    services: HashMap<Arc<str>, Service, RandomState>,
    /// Each service with queued expiries at its earliest, the soonest
    /// first: what expiry walks and the sweeper waits for. Each service
    /// keeps its own queue (see `entries`), one item an entry.
    soonest: BTreeSet<(Tick, Arc<str>)>,
    stats: RegistryStats,
}

/// Counts of what the registry did since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// New addresses registered.
    pub registrations: u64,
    /// Puts of an address already registered (heartbeats).
    pub renewals: u64,
    /// Addresses removed by a deregistration.
    pub deregistrations: u64,
    /// Addresses removed because their TTL passed.
    pub expiries: u64,
    /// Alive entries now.
    pub entries: usize,
}

/// What the table reserves, live or free, for tests and benches that
/// check it stays bounded by the live entries whatever the churn.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Alive entries.
    pub entries: usize,
    /// Services with alive entries.
    pub services: usize,
    /// Services the service map has room for.
    pub service_room: usize,
    /// Items in the expiry queues.
    pub queued: usize,
    /// Items the expiry queues have room for.
    pub queue_room: usize,
    /// Slots of the services' hash tables.
    pub slots: usize,
    /// Places for the entries' cold parts, free ones included.
    pub places: usize,
    /// Bytes reserved for the text of long addresses, free ones included.
    pub text_bytes: usize,
}

struct Service {
    name: Arc<str>,
    index: u64,
    entries: Entries,
    /// Its place in [`Table::soonest`]: the earliest queued expiry.
    due: Option<Tick>,
    /// `None` after a change: rebuilt by the next reader.
    listing: Option<Arc<Listing>>,
    /// Likewise, for readers of the details (JSON listings, status page).
    details: Option<Arc<Details>>,
}

impl Service {
    /// After a change of membership or labels; returns the old caches,
    /// if any, for [`Table::retired`].
    fn invalidate(&mut self) -> Option<Box<dyn Send>> {
        if self.listing.is_none() && self.details.is_none() {
            return None; // nothing to free, nothing to allocate
        }
        Some(Box::new((self.listing.take(), self.details.take())))
    }

    /// What renewals move, for every entry in the table's order: one
    /// sequential pass, so the lock is held briefly.
    fn times(&self) -> Vec<Stamp> {
        self.entries.iter().map(|e| e.raw_times()).collect()
    }

    /// The cached details, or what building them needs. Kept lean: at
    /// 100 000 entries, copying an empty label map per entry took 3 ms of
    /// lock time.
    fn details(&self) -> Result<Arc<Details>, Raw> {
        if let Some(d) = &self.details {
            return Ok(d.clone());
        }
        let mut raw = Raw {
            rows: Vec::with_capacity(self.entries.len()),
            labels: Vec::new(),
        };
        for (at, e) in self.entries.iter().enumerate() {
            raw.rows.push((e.key(), e.weight()));
            if !e.meta().is_empty() {
                raw.labels.push((at, e.meta().clone()));
            }
        }
        Err(raw)
    }
}

/// Addresses and weights in the table's order, and the labels of those
/// that have any: copied out to build [`Details`] without the lock.
struct Raw {
    rows: Vec<(Key<'static>, u32)>,
    labels: Vec<(usize, BTreeMap<String, String>)>,
}

/// A service's entries sorted by address with what only changes with its
/// index, built once per change: a JSON listing of 100 000 entries held
/// the table lock for 60 ms when it was built per request.
struct Details {
    rows: Vec<DetailRow>,
}

struct DetailRow {
    addr: String,
    weight: u32,
    meta: BTreeMap<String, String>,
    /// Position in the table's iteration order, which only inserts and
    /// removals change, and those invalidate the details.
    at: usize,
}

impl Details {
    /// From rows in the table's order.
    fn new(raw: Raw) -> Details {
        let mut rows: Vec<DetailRow> = raw
            .rows
            .into_iter()
            .enumerate()
            .map(|(at, (key, weight))| DetailRow {
                addr: key.to_string(),
                weight,
                meta: BTreeMap::new(),
                at,
            })
            .collect();
        for (at, meta) in raw.labels {
            rows[at].meta = meta;
        }
        rows.sort_unstable_by(|a, b| a.addr.cmp(&b.addr));
        Details { rows }
    }

    /// The entries as [`Registry::entries`] reports them at `now`.
    fn infos(&self, service: &str, times: &[Stamp], now: Tick) -> Vec<EntryInfo> {
        debug_assert_eq!(
            times.len(),
            self.rows.len(),
            "invalidated on every insert and removal"
        );
        self.rows
            .iter()
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
                }
            })
            .collect()
    }
}

/// One registered server as [`Registry::entries`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("default_ttl", &self.inner.default_ttl)
            .field("max_entries", &self.inner.max_entries)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
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
        RegistryBuilder {
            default_ttl: DEFAULT_TTL,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            clock: None,
        }
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
        };
        self.put_with(service, addr, &DEFAULTS)
    }

    /// Registers `addr` under `service`, or renews it.
    ///
    /// A renewal with the same weight and metadata only moves the deadline
    /// and leaves the modify index alone, so watchers are not woken by
    /// heartbeats.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`], [`Error::InvalidAddr`],
    /// [`Error::InvalidConfig`] for a weight or metadata out of bounds, and
    /// [`Error::Full`] for a new address when the registry is full. Nothing
    /// changes on error.
    pub fn put_with(&self, service: &str, addr: &str, opts: &PutOptions) -> Result<PutOutcome> {
        validate_service(service)?;
        let key = Key::checked(addr)?;
        opts.validate()?;
        let ttl = self.effective_ttl(opts.ttl);
        let now = self.inner.now();
        let mut locked = self.locked(now);
        let t = &mut *locked;
        if let Some(svc) = t.services.get_mut(service)
            && let Some(i) = svc.entries.find(&key)
        {
            let (changed, queued) = svc.entries.renew(i, ttl, opts.weight, &opts.meta, now);
            t.stats.renewals += 1;
            if changed {
                t.counter += 1;
                svc.index = t.counter;
                t.retired.extend(svc.invalidate());
                announce(&mut t.changed, &svc.name);
            }
            let index = svc.index;
            if queued && t.settle(service) {
                self.inner.wake.notify_all();
            }
            return Ok(PutOutcome {
                ttl,
                index,
                changed,
            });
        }
        if t.entries >= self.inner.max_entries {
            return Err(Error::Full {
                limit: self.inner.max_entries,
            });
        }
        t.stats.registrations += 1;
        let index = t.add(service, key, &self.inner.wake, |entries, key| {
            entries.insert(key, ttl, opts.weight, &opts.meta, now)
        });
        // Logged once the lock is released: a logger writes, and every
        // heartbeat would wait for it.
        drop(locked);
        log::info!("registered {addr} in service {service:?}");
        Ok(PutOutcome {
            ttl,
            index,
            changed: true,
        })
    }

    /// Removes `addr` from `service`; `Ok(false)` when it was not there.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`] or [`Error::InvalidAddr`].
    pub fn remove(&self, service: &str, addr: &str) -> Result<bool> {
        validate_service(service)?;
        let key = Key::checked(addr)?;
        let now = self.inner.now();
        let mut t = self.locked(now);
        let removed = t.remove(service, &key);
        if removed {
            t.stats.deregistrations += 1;
        }
        drop(t);
        if removed {
            log::info!("deregistered {addr} from service {service:?}");
        }
        Ok(removed)
    }

    /// The alive addresses of `service`, sorted by byte order.
    ///
    /// An invalid or unknown service has none.
    pub fn alive(&self, service: &str) -> Vec<String> {
        self.listing(service).addrs().to_vec()
    }

    /// The rendered listing of `service`: cheap to call, shared until the
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
                Some(svc) => (svc.index, svc.entries.iter().map(|e| e.key()).collect()),
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

    /// The table as text, with each entry's remaining TTL: what
    /// [`restore`](Registry::restore) reads back. One line per entry
    /// between a header (format version, modify counter, time written) and
    /// a trailer (entry count), so a truncated copy is detected.
    ///
    /// The text is marked as written by a running registry: changes may
    /// follow that it does not hold, so restoring it moves the counter past
    /// them (see [`restore`](Registry::restore)). A
    /// [`RegistryServer`](crate::RegistryServer) marks the one it writes at
    /// shutdown as clean.
    pub fn snapshot(&self) -> String {
        self.snapshot_text(false)
    }

    /// [`snapshot`](Registry::snapshot), marked clean when nothing can
    /// change after it (the final one of a shutdown).
    pub(crate) fn snapshot_text(&self, clean: bool) -> String {
        use std::fmt::Write as _;
        let now = self.inner.now();
        // Before the lock: every change acknowledged before this time is in
        // the copy, which is what a crash test can check against.
        let written = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        // Under the lock only what `entries` copies too (cached details or
        // their raw rows, and the times): at 100 000 entries, formatting
        // them under the lock would stall every heartbeat for milliseconds.
        type Taken = (Arc<str>, u64, Result<Arc<Details>, Raw>, Vec<Stamp>);
        let (counter, services) = {
            let t = self.locked(now);
            let services: Vec<Taken> = t
                .services
                .values()
                .map(|svc| (svc.name.clone(), svc.index, svc.details(), svc.times()))
                .collect();
            (t.counter, services)
        };
        let clean = if clean { "yes" } else { "no" };
        let mut out = format!(
            "{SNAPSHOT_MAGIC} {SNAPSHOT_VERSION}\ncounter {counter}\nwritten {written}\nclean {clean}\n"
        );
        let mut n = 0usize;
        for (service, index, cached, times) in services {
            let details = self.settle_details(&service, index, cached);
            for row in &details.rows {
                let t = times[row.at];
                let left = t.deadline().map_or("-".to_string(), |d| {
                    (d.saturating_sub(now) / 1_000_000).to_string()
                });
                let meta: Vec<(String, String)> = row
                    .meta
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let _ = writeln!(
                    out,
                    "{service}\t{}\t{}\t{}\t{left}\t{}",
                    row.addr,
                    row.weight,
                    t.ttl().as_millis(),
                    crate::protocol::encode_meta(&meta)
                );
                n += 1;
            }
        }
        let _ = writeln!(out, "end {n}");
        out
    }

    /// Loads a [`snapshot`](Registry::snapshot) into the table: entries come
    /// back with the TTL they had left (those already expired are dropped),
    /// and the modify counter never goes below the snapshot's, so clients
    /// never see an index go backwards across a restart. A snapshot not
    /// marked clean (written while the registry ran, or by a version that
    /// did not mark them) moves the counter a further 2^40 forward, past
    /// every index the changes lost with the crash could have been given.
    /// Returns how many entries were loaded.
    ///
    /// # Errors
    ///
    /// [`Error::BadResponse`] naming the line when the text is not a whole
    /// snapshot (corrupt or truncated); nothing is loaded then.
    pub fn restore(&self, text: &str) -> Result<usize> {
        let parsed = parse_snapshot(text)?;
        // The time the registry was down counts against the remaining TTLs
        // (wall clock: the monotonic clock does not survive a restart; a
        // clock set backwards counts as no time).
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let down = Duration::from_millis(now_ms.saturating_sub(parsed.written_ms));
        let now = self.inner.now();
        let mut t = self.locked(now);
        let floor = match parsed.clean {
            true => parsed.counter,
            false => parsed.counter.saturating_add(UNCLEAN_GAP),
        };
        t.counter = t.counter.max(floor);
        let mut loaded = 0;
        for mut e in parsed.entries {
            e.left = e.left.map(|l| l.saturating_sub(down));
            if e.left.is_some_and(|l| l.is_zero()) {
                continue;
            }
            let t = &mut *t;
            let key = Key::new(&e.addr);
            if t.services
                .get(e.service.as_str())
                .is_some_and(|s| s.entries.find(&key).is_some())
            {
                continue; // registered again before the restore: keep it
            }
            if t.entries >= self.inner.max_entries {
                log::warn!(
                    "snapshot entries beyond the limit of {} were not loaded",
                    self.inner.max_entries
                );
                break;
            }
            // Bounds may differ from those of the registry that wrote it.
            let ttl = match e.ttl.is_zero() {
                true => Duration::ZERO,
                false => self.effective_ttl(Some(e.ttl)),
            };
            // The counter is above the snapshot's already: no index a client
            // saw before the restart comes back.
            t.add(&e.service, key, &self.inner.wake, |entries, key| {
                entries.insert_restored(key, ttl, e.left, e.weight, &e.meta, now)
            });
            loaded += 1;
        }
        Ok(loaded)
    }

    /// After a snapshot could not be restored: moves the counter as far
    /// past the one its header names as past an unclean snapshot's, so no
    /// index a client saw before comes back; when not even the header of
    /// `damaged` reads, past 0 (the best guess left). Returns the counter
    /// read.
    pub(crate) fn restore_counter(&self, damaged: &[u8]) -> Option<u64> {
        let read = header_counter(damaged);
        let mut t = self.locked(self.inner.now());
        t.counter = t.counter.max(read.unwrap_or(0).saturating_add(UNCLEAN_GAP));
        read
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

    /// Starts a thread that removes entries as soon as their deadline passes,
    /// so a crashed server leaves the listing on time even when nobody asks.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the thread cannot be spawned.
    pub fn start_sweeper(&self) -> Result<Sweeper> {
        self.start_sweeper_named("regcenter-sweep".to_string())
    }

    pub(crate) fn start_sweeper_named(&self, name: String) -> Result<Sweeper> {
        let inner = self.inner.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || sweep_loop(&inner, &thread_stop))
            .map_err(|e| Error::io("spawn sweeper thread", e))?;
        Ok(Sweeper {
            registry: self.clone(),
            stop,
            handle: Some(handle),
        })
    }
}

/// First line of a snapshot: the format and its version. Version 2 added
/// the `clean` line; version 1 files still load, as not clean.
const SNAPSHOT_MAGIC: &str = "regcenter-snapshot";
const SNAPSHOT_VERSION: u32 = 2;

/// How far the modify counter moves forward when a snapshot is restored
/// that was not written at a clean shutdown (a crash, `kill -9`, power
/// loss). The changes made after that snapshot are lost, and with them
/// the indexes they were given, which clients may have seen: the counter
/// must pass all of them, or a client could see an index again for a
/// different listing. 2^40 bounds the lost interval with room to spare: at
/// a million changes a second, far more than the table can make (tens of
/// thousands a second were measured over HTTP), 2^40 indexes last 12
/// days, and the interval between snapshots is seconds. It still leaves
/// room for 16 million crashes before a u64 runs out, and indexes stay
/// below 2^53 (exact for JSON readers that use doubles) for the first 8 000.
const UNCLEAN_GAP: u64 = 1 << 40;

struct SnapshotEntry {
    service: String,
    addr: String,
    weight: u32,
    ttl: Duration,
    left: Option<Duration>,
    meta: BTreeMap<String, String>,
}

struct Snapshot {
    counter: u64,
    written_ms: u64,
    /// Written at a clean shutdown: nothing changed after it.
    clean: bool,
    entries: Vec<SnapshotEntry>,
}

/// The counter a snapshot's header names, read from bytes that need not be
/// a whole snapshot or text.
fn header_counter(bytes: &[u8]) -> Option<u64> {
    let mut lines = bytes.split(|&b| b == b'\n');
    std::str::from_utf8(lines.next()?)
        .ok()?
        .strip_prefix(SNAPSHOT_MAGIC)?;
    std::str::from_utf8(lines.next()?)
        .ok()?
        .strip_prefix("counter ")?
        .parse()
        .ok()
}

fn parse_snapshot(text: &str) -> Result<Snapshot> {
    let bad = |line: usize, what: &str| Error::BadResponse {
        url: "snapshot".into(),
        reason: format!("line {line}: {what}"),
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let version = match lines.next().map(|(_, l)| l.split_once(' ')) {
        Some(Some((SNAPSHOT_MAGIC, "1"))) => 1,
        Some(Some((SNAPSHOT_MAGIC, "2"))) => 2,
        _ => return Err(bad(1, "not a regcenter snapshot (version 1 or 2)")),
    };
    let counter = match lines.next() {
        Some((_, l)) => l
            .strip_prefix("counter ")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| bad(2, "expected `counter N`"))?,
        None => return Err(bad(2, "truncated before the counter")),
    };
    let written_ms = match lines.next() {
        Some((_, l)) => l
            .strip_prefix("written ")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| bad(3, "expected `written UNIX_MS`"))?,
        None => return Err(bad(3, "truncated before the time it was written")),
    };
    let clean = match version {
        1 => false,
        _ => match lines.next() {
            Some((_, "clean yes")) => true,
            Some((_, "clean no")) => false,
            Some(_) => return Err(bad(4, "expected `clean yes` or `clean no`")),
            None => return Err(bad(4, "truncated before the clean mark")),
        },
    };
    let mut entries = Vec::new();
    for (n, line) in lines {
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>().ok() != Some(entries.len()) {
                return Err(bad(
                    n,
                    "the entry count does not match: truncated or edited",
                ));
            }
            return Ok(Snapshot {
                counter,
                written_ms,
                clean,
                entries,
            });
        }
        let f: Vec<&str> = line.split('\t').collect();
        let [service, addr, weight, ttl, left, meta] = f[..] else {
            return Err(bad(n, "expected six tab-separated fields"));
        };
        validate_service(service).map_err(|e| bad(n, &e.to_string()))?;
        validate_addr(addr).map_err(|e| bad(n, &e.to_string()))?;
        let weight = weight
            .parse::<u32>()
            .ok()
            .filter(|w| (1..=MAX_WEIGHT).contains(w))
            .ok_or_else(|| bad(n, "bad weight"))?;
        let ms = |s: &str| s.parse::<u64>().map(Duration::from_millis);
        let ttl = ms(ttl).map_err(|_| bad(n, "bad ttl"))?;
        let left = match left {
            "-" => None,
            l => Some(ms(l).map_err(|_| bad(n, "bad remaining ttl"))?),
        };
        let meta = crate::protocol::parse_meta(meta)
            .map_err(|e| bad(n, &e))?
            .into_iter()
            .collect();
        entries.push(SnapshotEntry {
            service: service.to_string(),
            addr: addr.to_string(),
            weight,
            ttl,
            left,
            meta,
        });
    }
    Err(bad(
        text.lines().count(),
        "no `end` line: the snapshot is truncated",
    ))
}

/// Longest the sweeper sleeps without looking at the clock; bounds how late
/// a [`ManualClock`](crate::ManualClock) moved by hand is noticed.
const SWEEP_MAX_WAIT: Duration = Duration::from_secs(1);

fn sweep_loop(inner: &Inner, stop: &AtomicBool) {
    let mut t = inner.table.lock();
    // The flag is set under the table lock, so it cannot change between this
    // check and the wait below: no stop is missed.
    while !stop.load(Ordering::Acquire) {
        let now = inner.now();
        t.expire_due(now);
        let changed = std::mem::take(&mut t.changed);
        let retired = std::mem::take(&mut t.retired);
        let expired = std::mem::take(&mut t.expired);
        if !changed.is_empty() || !retired.is_empty() || !expired.is_empty() {
            MutexGuard::unlocked(&mut t, || {
                drop(retired);
                log_expired(&expired);
                inner.notify(&changed);
            });
        }
        let wait = t
            .soonest
            .first()
            .map_or(SWEEP_MAX_WAIT, |(at, _)| {
                Duration::from_nanos(at.saturating_sub(now))
            })
            .min(SWEEP_MAX_WAIT);
        // Also woken when an earlier deadline is scheduled or on stop.
        inner.wake.wait_for(&mut t, wait);
    }
}

/// Room of the service map below which it is not shrunk.
const MIN_SERVICE_ROOM: usize = 1024;
/// Expiries logged one line each at `info`; beyond, one summary line (and
/// a line each at `debug`).
const EXPIRY_LINES: usize = 100;

/// Logs what expired, after the table lock is released: at 100 000 expiries
/// a line each took the lock for as long as the logger took to write them.
fn log_expired(expired: &[(Arc<str>, Key<'static>)]) {
    if expired.len() <= EXPIRY_LINES {
        for (service, addr) in expired {
            log::info!("expired {addr} from service {:?}", &**service);
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
        .map(|(s, n)| format!("{n} from service {s:?}"))
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
            log::debug!("expired {addr} from service {:?}", &**service);
        }
    }
}

/// Adds `service` to the services changed, once for a run of changes to
/// it (a mass expiry changes one service 100 000 times).
fn announce(changed: &mut Vec<Arc<str>>, service: &Arc<str>) {
    if changed.last().is_none_or(|c| !Arc::ptr_eq(c, service)) {
        changed.push(service.clone());
    }
}

impl Table {
    /// Files `service` in [`soonest`](Table::soonest) at its earliest
    /// queued expiry after its queue changed, and lets it go when it has
    /// emptied out. Returns whether it is now the soonest of all (then the
    /// sweeper must be woken).
    fn settle(&mut self, service: &str) -> bool {
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

    /// Adds an absent entry with `insert`, which queues its expiry and
    /// returns its deadline: a new index for its service, the caches
    /// retired, the change announced. Returns the index.
    fn add<'k>(
        &mut self,
        service: &str,
        key: Key<'k>,
        wake: &Condvar,
        insert: impl FnOnce(&mut Entries, Key<'k>) -> Option<Tick>,
    ) -> u64 {
        self.counter += 1;
        self.entries += 1;
        let index = self.counter;
        let svc = self.service_mut(service);
        svc.index = index;
        let old = svc.invalidate();
        let deadline = insert(&mut svc.entries, key);
        let name = svc.name.clone();
        self.retired.extend(old);
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
            };
            self.services.insert(name, svc);
        }
        self.services.get_mut(name).expect("inserted above")
    }

    fn remove(&mut self, service: &str, addr: &Key) -> bool {
        let Some(svc) = self.services.get_mut(service) else {
            return false;
        };
        if !svc.entries.remove(addr) {
            return false;
        }
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
        self.retired.extend(svc.invalidate());
        // Only ever later: the sweeper need not be woken.
        self.settle(service);
    }

    /// Expires every entry whose deadline has passed, service by service
    /// in the order of their earliest expiry; returns how many.
    fn expire_due(&mut self, now: Tick) -> usize {
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
            self.stats.expiries += n as u64;
            self.removed(&name, n);
            total += n;
        }
        total
    }
}

/// The thread that expires entries on time; see [`Registry::start_sweeper`].
///
/// Stopping or dropping it ends and joins the thread.
#[must_use = "dropping the Sweeper stops it"]
pub struct Sweeper {
    registry: Registry,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sweeper {
    /// Stops the thread and waits for it.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the thread panicked.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        {
            let _t = self.registry.inner.table.lock();
            self.stop.store(true, Ordering::Release);
            self.registry.inner.wake.notify_all();
        }
        handle.join().map_err(|_| Error::Stopped {
            what: "sweeper (it panicked)".into(),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const S: Duration = Duration::from_secs(1);

    fn registry(clock: &ManualClock) -> Registry {
        Registry::builder()
            .default_ttl(5 * S)
            .min_ttl(S)
            .max_ttl(60 * S)
            .clock(clock.clone())
            .build()
            .unwrap()
    }

    #[test]
    fn entries_expire_when_their_ttl_passes_unless_renewed() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put("", "a").unwrap();
        reg.put("", "b").unwrap();
        clock.advance(4 * S);
        reg.put("", "b").unwrap(); // renew b only
        assert_eq!(reg.alive(""), ["a", "b"]);
        clock.advance(S);
        assert_eq!(reg.alive(""), ["b"], "a's deadline passed exactly now");
        clock.advance(3 * S);
        assert_eq!(reg.alive(""), ["b"]);
        clock.advance(S);
        assert!(reg.alive("").is_empty());
        assert_eq!(reg.len(), 0);
    }

    #[test]
    fn sweep_removes_due_entries_and_counts_them() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        for a in ["a", "b", "c"] {
            reg.put("svc", a).unwrap();
        }
        assert_eq!(reg.sweep(), 0);
        clock.advance(5 * S);
        assert_eq!(reg.sweep(), 3);
        assert!(reg.services().is_empty());
    }

    #[test]
    fn alive_is_sorted_by_bytes() {
        let reg = Registry::new();
        for a in ["tcp@b:2", "tcp@a:10", "Z", "tcp@a:9"] {
            reg.put("", a).unwrap();
        }
        assert_eq!(reg.alive(""), ["Z", "tcp@a:10", "tcp@a:9", "tcp@b:2"]);
        assert_eq!(reg.listing("").joined(), "Z,tcp@a:10,tcp@a:9,tcp@b:2");
        assert_eq!(reg.listing("").text(), "Z\ntcp@a:10\ntcp@a:9\ntcp@b:2\n");
    }

    #[test]
    fn index_moves_on_membership_changes_only() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        let i0 = reg.index("svc");
        let put = reg.put("svc", "a").unwrap();
        assert!(put.changed && put.index > i0);
        let renew = reg.put("svc", "a").unwrap();
        assert!(!renew.changed);
        assert_eq!(renew.index, put.index, "a renewal leaves the index alone");
        let weighted = reg
            .put_with("svc", "a", &PutOptions::new().weight(2))
            .unwrap();
        assert!(weighted.changed && weighted.index > put.index);
        let labelled = reg
            .put_with("svc", "a", &PutOptions::new().weight(2).meta("zone", "x"))
            .unwrap();
        assert!(labelled.index > weighted.index);
        let other = reg.put("other", "z").unwrap();
        assert_eq!(
            reg.index("svc"),
            labelled.index,
            "other services do not move it"
        );
        assert!(other.index > labelled.index, "one registry-wide counter");
        assert!(reg.remove("svc", "a").unwrap());
        let after_remove = reg.index("svc");
        assert!(after_remove > other.index);
        reg.put("svc", "b").unwrap();
        let before_expiry = reg.index("svc");
        clock.advance(5 * S);
        assert!(reg.index("svc") > before_expiry, "expiry moves it");
    }

    #[test]
    fn index_never_goes_backwards_when_a_service_empties() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        let mut last = reg.index("svc");
        for step in 0..20 {
            match step % 4 {
                0 => drop(reg.put("svc", "a").unwrap()),
                1 => drop(reg.put("other", &format!("o{step}")).unwrap()),
                2 => drop(reg.remove("svc", "a").unwrap()),
                _ => clock.advance(5 * S),
            }
            let now = reg.index("svc");
            assert!(now >= last, "step {step}: {now} < {last}");
            last = now;
        }
    }

    #[test]
    fn requested_ttl_is_clamped_to_the_bounds() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        let ttl = |d| {
            reg.put_with("", "a", &PutOptions::new().ttl(d))
                .unwrap()
                .ttl
        };
        assert_eq!(ttl(Duration::from_millis(10)), S);
        assert_eq!(ttl(Duration::ZERO), S);
        assert_eq!(ttl(10 * S), 10 * S);
        assert_eq!(ttl(3600 * S), 60 * S);
        assert_eq!(reg.put("", "b").unwrap().ttl, 5 * S);
    }

    #[test]
    fn a_shorter_ttl_on_renewal_takes_effect() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put_with("", "a", &PutOptions::new().ttl(60 * S))
            .unwrap();
        reg.put_with("", "a", &PutOptions::new().ttl(2 * S))
            .unwrap();
        clock.advance(2 * S);
        assert!(reg.alive("").is_empty());
    }

    #[test]
    fn a_longer_ttl_on_renewal_takes_effect() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put_with("", "a", &PutOptions::new().ttl(2 * S))
            .unwrap();
        reg.put_with("", "a", &PutOptions::new().ttl(30 * S))
            .unwrap();
        clock.advance(29 * S);
        assert_eq!(reg.alive(""), ["a"]);
        clock.advance(S);
        assert!(reg.alive("").is_empty());
    }

    #[test]
    fn zero_default_ttl_means_never_expires_as_in_the_seed() {
        let clock = ManualClock::new();
        let reg = Registry::builder()
            .default_ttl(Duration::ZERO)
            .clock(clock.clone())
            .build()
            .unwrap();
        let put = reg.put("", "a").unwrap();
        assert_eq!(put.ttl, Duration::ZERO);
        clock.advance(1_000_000 * S);
        assert_eq!(reg.alive(""), ["a"]);
        assert_eq!(reg.entries()[0].expires_in, None);
    }

    #[test]
    fn reregistering_after_removal_gets_a_fresh_deadline() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put("", "a").unwrap();
        clock.advance(4 * S);
        reg.remove("", "a").unwrap();
        reg.put("", "a").unwrap();
        clock.advance(2 * S); // the first registration's deadline has passed
        assert_eq!(reg.alive(""), ["a"]);
        clock.advance(3 * S);
        assert!(reg.alive("").is_empty());
    }

    #[test]
    fn services_are_isolated() {
        let reg = Registry::new();
        reg.put("arith", "a").unwrap();
        reg.put("", "b").unwrap();
        assert_eq!(reg.alive("arith"), ["a"]);
        assert_eq!(reg.alive(""), ["b"]);
        assert!(reg.alive("other").is_empty());
        assert!(!reg.remove("other", "a").unwrap());
        assert_eq!(reg.services(), ["", "arith"]);
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let reg = Registry::new();
        let before = reg.counter();
        assert!(matches!(reg.put("", "a,b"), Err(Error::InvalidAddr { .. })));
        assert!(matches!(
            reg.put("a/b", "a"),
            Err(Error::InvalidService { .. })
        ));
        let w0 = PutOptions::new().weight(0);
        assert!(matches!(
            reg.put_with("", "a", &w0),
            Err(Error::InvalidConfig { .. })
        ));
        let big = PutOptions::new().meta("k", "v".repeat(2000));
        assert!(matches!(
            reg.put_with("", "a", &big),
            Err(Error::InvalidConfig { .. })
        ));
        assert_eq!(reg.counter(), before);
        assert!(reg.is_empty());
    }

    #[test]
    fn a_full_registry_refuses_new_addresses_but_renews() {
        let reg = Registry::builder().max_entries(2).build().unwrap();
        reg.put("", "a").unwrap();
        reg.put("x", "b").unwrap();
        assert!(matches!(reg.put("", "c"), Err(Error::Full { limit: 2 })));
        assert!(reg.put("", "a").is_ok());
        reg.remove("", "a").unwrap();
        assert!(reg.put("", "c").is_ok());
    }

    #[test]
    fn invalid_settings_are_refused() {
        let b = Registry::builder;
        assert!(b().min_ttl(Duration::ZERO).build().is_err());
        assert!(
            b().min_ttl(10 * S)
                .max_ttl(5 * S)
                .default_ttl(7 * S)
                .build()
                .is_err()
        );
        assert!(b().default_ttl(2 * 3600 * S).build().is_err());
        assert!(b().max_entries(0).build().is_err());
        assert!(b().default_ttl(Duration::ZERO).build().is_ok());
        // A TTL shares its word with the weight; an entry's position is 32 bits.
        assert!(b().max_ttl(TTL_LIMIT).build().is_ok());
        let err = b().max_ttl(TTL_LIMIT + S).build().unwrap_err();
        assert!(err.to_string().contains("72h"), "{err}");
        assert!(b().max_entries(u32::MAX as usize).build().is_ok());
        assert!(b().max_entries(u32::MAX as usize + 1).build().is_err());
    }

    #[test]
    fn the_listing_is_shared_until_the_service_changes() {
        let reg = Registry::new();
        reg.put("", "a").unwrap();
        let l1 = reg.listing("");
        reg.put("", "a").unwrap(); // renewal
        assert!(Arc::ptr_eq(&l1, &reg.listing("")));
        reg.put("", "b").unwrap();
        assert!(!Arc::ptr_eq(&l1, &reg.listing("")));
    }

    #[test]
    fn the_sweeper_expires_entries_without_callers() {
        let reg = Registry::builder()
            .default_ttl(Duration::from_millis(50))
            .min_ttl(Duration::from_millis(10))
            .build()
            .unwrap();
        let sweeper = reg.start_sweeper().unwrap();
        let counter = reg.counter();
        reg.put("", "a").unwrap();
        let deadline = Instant::now() + 5 * S;
        // Read the counter only: it does not expire entries itself, so it
        // moves past the registration only through the sweeper.
        while reg.counter() == counter + 1 {
            assert!(
                Instant::now() < deadline,
                "the sweeper did not expire the entry"
            );
            std::thread::yield_now();
        }
        assert_eq!(reg.counter(), counter + 2);
        sweeper.stop().unwrap();
    }

    #[test]
    fn snapshots_round_trip_and_drop_what_expired() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put_with(
            "svc",
            "a",
            &PutOptions::new()
                .ttl(30 * S)
                .weight(4)
                .meta("zone", "e u&x"),
        )
        .unwrap();
        reg.put_with("", "b", &PutOptions::new().ttl(2 * S))
            .unwrap();
        let counter = reg.counter();
        let text = reg.snapshot();
        clock.advance(S);
        let fresh = registry(&clock);
        // Time passes during the restart: b has 2 s left in the snapshot.
        clock.advance(S);
        assert_eq!(fresh.restore(&text).unwrap(), 2);
        assert!(fresh.counter() >= counter);
        assert!(fresh.index("svc") >= counter, "no index goes backwards");
        let e = &fresh.entries()[1];
        assert_eq!(
            (e.addr.as_str(), e.weight, e.meta["zone"].as_str()),
            ("a", 4, "e u&x")
        );
        clock.advance(2 * S);
        assert!(fresh.alive("").is_empty(), "b's remaining 2 s passed");
        assert_eq!(fresh.alive("svc"), ["a"]);
    }

    #[test]
    fn a_restore_keeps_to_the_bounds_and_the_limit_of_its_registry() {
        let clock = ManualClock::new();
        let wide = Registry::builder()
            .max_ttl(3600 * S)
            .clock(clock.clone())
            .build()
            .unwrap();
        for a in ["a", "b", "c"] {
            wide.put_with("", a, &PutOptions::new().ttl(3600 * S))
                .unwrap();
        }
        let narrow = Registry::builder()
            .max_ttl(60 * S)
            .max_entries(2)
            .clock(clock.clone())
            .build()
            .unwrap();
        assert_eq!(narrow.restore(&wide.snapshot()).unwrap(), 2);
        for e in narrow.entries() {
            assert_eq!(e.ttl, 60 * S, "{e:?}");
            assert!(e.expires_in.unwrap() <= 60 * S, "{e:?}");
        }
        clock.advance(60 * S);
        assert!(narrow.is_empty(), "the clamped TTL is the one in force");
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

    /// The registry against a plain model, over random operations: puts
    /// with TTLs, weights and labels, removals, time passing, restores.
    #[test]
    fn random_operations_agree_with_a_plain_model() {
        struct Model {
            deadline: Duration,
            ttl: Duration,
            weight: u32,
            meta: BTreeMap<String, String>,
        }
        let long = "tcp@a-rather-long-host-name.example.org:7001";
        let addrs: Vec<String> = (0..24)
            .map(|i| match i % 4 {
                0 => format!("tcp@10.0.{}.{}:7001", i / 8, i),
                1 => format!("u@{i}"),
                2 => format!("{long}{i}"),
                _ => format!("tcp@010.0.0.{i}:7001"), // not canonical: kept as text
            })
            .collect();
        let services = ["", "a", "b"];
        for seed in 1..=8u64 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = |n: usize| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % n as u64) as usize
            };
            let clock = ManualClock::new();
            let mut reg = registry(&clock);
            let mut now = Duration::ZERO;
            let mut model: HashMap<(String, String), Model> = HashMap::new();
            for step in 0..3000 {
                let service = services[next(services.len())];
                let addr = &addrs[next(addrs.len())];
                let key = (service.to_string(), addr.clone());
                model.retain(|_, m| m.deadline > now);
                match next(10) {
                    0..=5 => {
                        let ttl = [None, Some(S), Some(3 * S), Some(90 * S)][next(4)];
                        let weight = 1 + next(3) as u32;
                        let mut opts = PutOptions::new().weight(weight);
                        if next(4) == 0 {
                            opts = opts.meta("zone", ["x", "y"][next(2)]);
                        }
                        if let Some(ttl) = ttl {
                            opts = opts.ttl(ttl);
                        }
                        let ttl = ttl.map_or(5 * S, |t| t.clamp(S, 60 * S));
                        let out = reg.put_with(service, addr, &opts).unwrap();
                        let labels_changed = model
                            .get(&key)
                            .is_none_or(|m| m.weight != weight || &m.meta != opts.meta_map());
                        assert_eq!(out.changed, labels_changed, "seed {seed} step {step}");
                        let meta = opts.meta_map().clone();
                        let deadline = now + ttl;
                        model.insert(
                            key,
                            Model {
                                deadline,
                                ttl,
                                weight,
                                meta,
                            },
                        );
                    }
                    6 => {
                        let removed = reg.remove(service, addr).unwrap();
                        assert_eq!(
                            removed,
                            model.remove(&key).is_some(),
                            "seed {seed} step {step}"
                        );
                    }
                    7 | 8 => {
                        let by = Duration::from_millis(50 * next(50) as u64);
                        clock.advance(by);
                        now += by;
                    }
                    _ => {
                        // A restart: the table comes back from its snapshot.
                        // The wall-clock time it takes counts against the
                        // remaining TTLs, as the time a registry is down
                        // does. It is measured, so how this thread is
                        // scheduled decides nothing: each entry may lose up
                        // to it, rounded up, and a millisecond for each of
                        // the two times the snapshot keeps in milliseconds.
                        let started = Instant::now();
                        let text = reg.snapshot();
                        reg = registry(&clock);
                        reg.restore(&text).unwrap();
                        let ms = started.elapsed().as_micros().div_ceil(1000) as u64;
                        let lost = Duration::from_millis(ms + 2);
                        // The model takes what each entry kept.
                        let restored: HashMap<(String, String), Duration> = reg
                            .entries()
                            .into_iter()
                            .map(|e| ((e.service, e.addr), e.expires_in.unwrap()))
                            .collect();
                        model.retain(|key, m| {
                            let want = m.deadline - now;
                            let Some(&left) = restored.get(key) else {
                                assert!(
                                    want <= lost,
                                    "seed {seed} step {step}: {key:?} with {want:?} left \
                                     did not survive a restart of {lost:?}"
                                );
                                return false;
                            };
                            assert!(
                                left <= want && want - left <= lost,
                                "seed {seed} step {step}: {key:?} kept {left:?} of \
                                 {want:?} over a restart of {lost:?}"
                            );
                            m.deadline = now + left;
                            true
                        });
                    }
                }
                model.retain(|_, m| m.deadline > now);
                for s in services {
                    let mut want: Vec<(&String, &Model)> = model
                        .iter()
                        .filter(|((ms, _), _)| ms == s)
                        .map(|((_, a), m)| (a, m))
                        .collect();
                    want.sort_by(|a, b| a.0.cmp(b.0));
                    let (_, got) = reg.instances(s);
                    let got_addrs: Vec<&String> = got.iter().map(|e| &e.addr).collect();
                    let want_addrs: Vec<&String> = want.iter().map(|w| w.0).collect();
                    assert_eq!(
                        got_addrs, want_addrs,
                        "seed {seed} step {step} service {s:?}"
                    );
                    let alive = reg.alive(s);
                    assert_eq!(
                        alive.iter().collect::<Vec<_>>(),
                        want_addrs,
                        "seed {seed} step {step}"
                    );
                    for (e, (_, m)) in got.iter().zip(&want) {
                        assert_eq!((e.weight, &e.meta, e.ttl), (m.weight, &m.meta, m.ttl));
                        // Only the manual clock moves time between restarts.
                        assert_eq!(
                            e.expires_in,
                            Some(m.deadline - now),
                            "seed {seed} step {step}: {}",
                            e.addr
                        );
                    }
                }
                assert_eq!(reg.len(), model.len());
            }
        }
    }

    #[test]
    fn corrupt_or_truncated_snapshots_load_nothing() {
        let reg = Registry::new();
        reg.put("svc", "a").unwrap();
        reg.put("svc", "b").unwrap();
        let text = reg.snapshot();
        let fresh = Registry::new();
        let truncated = &text[..text.rfind("end").unwrap()];
        for bad in [
            "",
            "garbage",
            truncated,
            &text.replacen("\t1\t5000", "\tx\t5000", 1),
            &text.replace("end 2", "end 3"),
        ] {
            assert!(
                matches!(fresh.restore(bad), Err(Error::BadResponse { .. })),
                "{bad:?}"
            );
        }
        assert!(fresh.is_empty());
        assert_eq!(fresh.restore(&text).unwrap(), 2);
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

    #[test]
    fn a_snapshot_not_marked_clean_moves_the_counter_past_what_a_crash_lost() {
        let reg = Registry::new();
        for a in ["a", "b", "c"] {
            reg.put("svc", a).unwrap();
        }
        reg.remove("svc", "c").unwrap();
        let counter = reg.counter();
        // The final snapshot of a shutdown: nothing changed after it.
        let clean = Registry::new();
        assert_eq!(clean.restore(&reg.snapshot_text(true)).unwrap(), 2);
        assert_eq!(clean.counter(), counter + 2, "one change per entry loaded");
        // Written while running: changes may have followed, with indexes
        // clients saw.
        let unclean = Registry::new();
        assert_eq!(unclean.restore(&reg.snapshot()).unwrap(), 2);
        assert_eq!(unclean.counter(), counter + UNCLEAN_GAP + 2);
        assert!(unclean.index("svc") > counter + UNCLEAN_GAP);
        assert!(reg.snapshot().contains("\nclean no\n"));
    }

    #[test]
    fn version_1_snapshots_still_load_as_not_clean() {
        let v1 = "regcenter-snapshot 1\ncounter 9\nwritten 0\n\
                  svc\ttcp@a:1\t3\t0\t-\tzone=eu\nend 1\n";
        let reg = Registry::new();
        assert_eq!(reg.restore(v1).unwrap(), 1);
        assert_eq!(reg.counter(), 9 + UNCLEAN_GAP + 1);
        let e = &reg.entries()[0];
        assert_eq!(
            (e.addr.as_str(), e.weight, e.ttl),
            ("tcp@a:1", 3, Duration::ZERO)
        );
        assert_eq!(e.meta["zone"], "eu");
        for bad in [
            v1.replace("snapshot 1", "snapshot 3"),
            v1.replace("snapshot 1", "snapshot 2"), // no clean line
        ] {
            assert!(
                matches!(
                    Registry::new().restore(&bad),
                    Err(Error::BadResponse { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_counter_of_a_damaged_snapshot_is_passed_when_its_header_reads() {
        let reg = Registry::new();
        assert_eq!(
            reg.restore_counter(b"regcenter-snapshot 2\ncounter 77\n\xff"),
            Some(77)
        );
        assert_eq!(reg.counter(), 77 + UNCLEAN_GAP);
        let other = Registry::new();
        assert_eq!(other.restore_counter(b"\xffgarbage\ncounter 5\n"), None);
        assert_eq!(
            other.counter(),
            UNCLEAN_GAP,
            "past what one crash could lose"
        );
    }

    #[test]
    fn registry_and_handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Registry>();
        check::<Sweeper>();
        check::<Listing>();
    }
}
