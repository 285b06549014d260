//! What a server announces with an entry, how a registry is built, and
//! what it reports of itself: [`PutOptions`], [`PutOutcome`],
//! [`RegistryBuilder`], [`RegistryStats`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::Registry;
use super::entries::TTL_LIMIT;
use super::table::{Inner, Table, Time};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::protocol::{Status, format_duration};

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
    pub(super) ttl: Option<Duration>,
    pub(super) weight: u32,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) status: Option<Status>,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            ttl: None,
            weight: 1,
            meta: BTreeMap::new(),
            status: None,
        }
    }
}

impl PutOptions {
    /// Default options: the registry's default TTL, weight 1, no metadata,
    /// the status in force kept.
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

    /// The status to set: [`Status::Draining`] takes the entry out of
    /// [`Registry::alive`] and the seed's listings while it keeps renewing,
    /// [`Status::Up`] brings it back. Sticky: a put without a status keeps
    /// the one in force, so heartbeats that never send one (the seed's) do
    /// not undo a drain. Defaults to none: the status in force, up for a new
    /// entry.
    ///
    /// ```
    /// use regcenter::{PutOptions, Registry, Status};
    ///
    /// let reg = Registry::new();
    /// reg.put("arith", "tcp@127.0.0.1:7001")?;
    /// reg.put_with("arith", "tcp@127.0.0.1:7001", &PutOptions::new().status(Status::Draining))?;
    /// assert!(reg.alive("arith").is_empty());
    /// // A renewal without a status (the seed's heartbeat) keeps the drain.
    /// reg.put("arith", "tcp@127.0.0.1:7001")?;
    /// assert!(reg.alive("arith").is_empty());
    /// reg.put_with("arith", "tcp@127.0.0.1:7001", &PutOptions::new().status(Status::Up))?;
    /// assert_eq!(reg.alive("arith"), ["tcp@127.0.0.1:7001"]);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn status(mut self, status: Status) -> PutOptions {
        self.status = Some(status);
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

    /// The status asked for, if any (`None`: keep the one in force).
    ///
    /// ```
    /// use regcenter::{PutOptions, Status};
    ///
    /// assert_eq!(PutOptions::new().status_value(), None);
    /// assert_eq!(PutOptions::new().status(Status::Draining).status_value(), Some(Status::Draining));
    /// ```
    pub fn status_value(&self) -> Option<Status> {
        self.status
    }

    pub(super) fn validate(&self) -> Result<()> {
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
#[non_exhaustive]
pub struct PutOutcome {
    /// The TTL in force for the entry (zero: it never expires).
    pub ttl: Duration,
    /// The service's modify index after the put.
    pub index: u64,
    /// Whether the put changed the listing (a new address, or a new weight,
    /// metadata or status); `false` for a plain renewal.
    pub changed: bool,
}

impl PutOutcome {
    #[cfg(feature = "etcd")]
    pub(crate) fn new(ttl: Duration, index: u64, changed: bool) -> PutOutcome {
        PutOutcome {
            ttl,
            index,
            changed,
        }
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
    free_form_addresses: bool,
    /// `None`: the system clock, read without building `Instant`s.
    clock: Option<Arc<dyn Clock>>,
}

impl RegistryBuilder {
    /// The defaults, as [`Registry::builder`] hands them out.
    pub(super) fn new() -> RegistryBuilder {
        RegistryBuilder {
            default_ttl: DEFAULT_TTL,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            free_form_addresses: false,
            clock: None,
        }
    }

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

    /// Registers any address of visible ASCII without a comma, as before
    /// addresses were checked for a shape clients can dial (`proto@rest`,
    /// `host:port` for `tcp`, `udp` and `http`; see
    /// [`validate_dialable_addr`](crate::protocol::validate_dialable_addr)).
    /// Defaults to off: an address a client cannot dial is refused with
    /// [`Error::InvalidAddr`].
    pub fn free_form_addresses(mut self, on: bool) -> RegistryBuilder {
        self.free_form_addresses = on;
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
                free_form_addresses: self.free_form_addresses,
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
                recovery: std::sync::atomic::AtomicU64::new(super::table::NEVER_SERVED),
            }),
        })
    }
}

/// Counts of what the registry did since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

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
}
