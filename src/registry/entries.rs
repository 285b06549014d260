//! The entries of one service, laid out for heartbeats.
//!
//! A heartbeat is a hash lookup under the table lock, so nothing overlaps
//! its cache misses: with 100 000 entries its cost is the latency of the
//! lines it touches, one after the other, and that latency jumps once the
//! data outgrows the part of the last-level cache a process gets (a few MB
//! on a shared 2-core machine: 15 ns per random line within 4 MB, 120 ns
//! and more beyond 8 MB). So a heartbeat touches one 32-byte slot of the
//! hash table, which holds what it reads: the address (an IPv4 `tcp@`
//! address packed in 6 bytes, other short ones inline), the deadline, the
//! TTL and the weight; 4 MB for 100 000 entries. Expiry queue bookkeeping
//! and labels live in `cold`, which a plain heartbeat does not read; the
//! text of an address too long to pack lives in `texts`, where its slot
//! points straight at it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::HashTable;

use super::RandomState;

/// Largest TTL an entry can hold: its nanoseconds share a word with the
/// weight (48 bits, 78 h). A registry refuses bounds above it.
pub const TTL_LIMIT: Duration = Duration::from_secs(72 * 3600);

/// Time as nanoseconds since the registry was built: 8 bytes where an
/// `Instant` takes 16, and plain integer arithmetic.
pub(super) type Tick = u64;

/// Longest address kept inline when it is not an IPv4 `tcp@` address.
const SHORT: usize = 10;
const TTL_SHIFT: u32 = 16;
/// Weights are at most 10 000: 15 bits, and one bit says labels exist.
const WEIGHT_MASK: u64 = 0x7fff;
const HAS_META: u64 = 0x8000;

/// An address in 12 bytes. Every address has exactly one form (it is
/// `Tcp4` only when it prints back to the same text, `Short` only when it
/// is not `Tcp4` and fits), so equal addresses have equal forms.
#[derive(Clone, Copy, Debug)]
enum Packed {
    Tcp4 {
        ip: [u8; 4],
        port: u16,
    },
    Short {
        len: u8,
        buf: [u8; SHORT],
    },
    /// The text is in [`Texts`], at `at` among the places of `class`; the
    /// length and 32 more bits of the table hash tell most unequal
    /// addresses apart here.
    Long {
        len: u8,
        class: u8,
        digest: u32,
        at: u32,
    },
}

impl PartialEq for Packed {
    fn eq(&self, other: &Packed) -> bool {
        match (self, other) {
            (Packed::Tcp4 { ip: a, port: p }, Packed::Tcp4 { ip: b, port: q }) => a == b && p == q,
            (Packed::Short { len: a, buf: x }, Packed::Short { len: b, buf: y }) => {
                a == b && x == y
            }
            // Where a text is stored is not part of the address.
            (
                Packed::Long {
                    len: a, digest: x, ..
                },
                Packed::Long {
                    len: b, digest: y, ..
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

impl Eq for Packed {}

impl Packed {
    /// With the digest of a `Long` address taken from its table hash (the
    /// high bits; hashbrown uses the top 7 and the low ones).
    fn with_digest(mut self, hash: u64) -> Packed {
        if let Packed::Long { digest, .. } = &mut self {
            *digest = (hash >> 24) as u32;
        }
        self
    }
}

/// The texts of long addresses, one arena per place size (16 to 256 bytes:
/// addresses have at most 255): a slot points straight at its text, one
/// cache miss, and a freed place is reused by the next text of its size.
#[derive(Default)]
struct Texts {
    arenas: [Arena; PLACES.len()],
}

#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
    free: Vec<u32>,
}

const PLACES: [usize; 5] = [16, 32, 64, 128, 256];

impl Texts {
    /// Stores `text`; returns its class and place.
    fn put(&mut self, text: &str) -> (u8, u32) {
        let class = PLACES
            .iter()
            .position(|&p| text.len() <= p)
            .expect("addresses are validated to 255 bytes at most");
        let size = PLACES[class];
        let arena = &mut self.arenas[class];
        let at = match arena.free.pop() {
            Some(at) => at,
            None => {
                arena.bytes.resize(arena.bytes.len() + size, 0);
                u32::try_from(arena.bytes.len() / size - 1).expect("fewer than 2^32 entries")
            }
        };
        let start = at as usize * size;
        arena.bytes[start..start + text.len()].copy_from_slice(text.as_bytes());
        (class as u8, at)
    }

    /// The text of a `Long` address, `None` for the others.
    fn of(&self, packed: &Packed) -> Option<&str> {
        let Packed::Long { len, class, at, .. } = *packed else {
            return None;
        };
        let start = at as usize * PLACES[usize::from(class)];
        let bytes = &self.arenas[usize::from(class)].bytes[start..start + usize::from(len)];
        Some(std::str::from_utf8(bytes).expect("stored from a str"))
    }

    fn free(&mut self, packed: &Packed) {
        if let Packed::Long { class, at, .. } = *packed {
            self.arenas[usize::from(class)].free.push(at);
        }
    }
}

/// A server address as the table keys it; a long address borrows its
/// text for a lookup, so a heartbeat allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Key<'a> {
    packed: Packed,
    /// The text of a `Long` address.
    long: Option<Cow<'a, str>>,
}

impl<'a> Key<'a> {
    /// The key of `addr` after checking it as
    /// [`validate_addr`](crate::protocol::validate_addr) does; a packed
    /// IPv4 address is valid by its shape, so a heartbeat scans it once.
    pub(super) fn checked(addr: &'a str) -> crate::Result<Key<'a>> {
        if let Some(packed) = parse_tcp4(addr) {
            return Ok(Key { packed, long: None });
        }
        crate::protocol::validate_addr(addr)?;
        Ok(Key::new(addr))
    }

    /// The key to keep, for the expiry queue.
    pub(super) fn into_owned(self) -> Key<'static> {
        Key {
            packed: self.packed,
            long: self.long.map(|l| Cow::Owned(l.into_owned())),
        }
    }

    pub(super) fn new(addr: &'a str) -> Key<'a> {
        if let Some(packed) = parse_tcp4(addr) {
            return Key { packed, long: None };
        }
        let bytes = addr.as_bytes();
        if bytes.len() <= SHORT {
            let mut buf = [0; SHORT];
            buf[..bytes.len()].copy_from_slice(bytes);
            let len = bytes.len() as u8;
            return Key {
                packed: Packed::Short { len, buf },
                long: None,
            };
        }
        Key {
            packed: Packed::Long {
                len: bytes.len() as u8,
                class: 0,
                digest: 0,
                at: 0,
            },
            long: Some(Cow::Borrowed(addr)),
        }
    }

    /// The table hash: seeded, and over the whole text of a long address,
    /// so crafted addresses cannot pile up in one probe sequence.
    fn hash(&self, hasher: &RandomState) -> u64 {
        hash_of(&self.packed, self.long.as_deref(), hasher)
    }
}

fn hash_of(packed: &Packed, long: Option<&str>, hasher: &RandomState) -> u64 {
    match (packed, long) {
        (Packed::Tcp4 { ip, port }, _) => {
            hasher.hash_one(u64::from(u32::from_be_bytes(*ip)) << 16 | u64::from(*port))
        }
        (Packed::Short { len, buf }, _) => hasher.hash_one(&buf[..usize::from(*len)]),
        (Packed::Long { .. }, text) => hasher.hash_one(text.unwrap_or_default().as_bytes()),
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_addr(f, &self.packed, self.long.as_deref())
    }
}

fn write_addr(f: &mut fmt::Formatter<'_>, packed: &Packed, long: Option<&str>) -> fmt::Result {
    match packed {
        Packed::Tcp4 {
            ip: [a, b, c, d],
            port,
        } => write!(f, "tcp@{a}.{b}.{c}.{d}:{port}"),
        Packed::Short { len, buf } => {
            f.write_str(std::str::from_utf8(&buf[..usize::from(*len)]).expect("from a str"))
        }
        Packed::Long { .. } => f.write_str(long.unwrap_or_default()),
    }
}

/// `tcp@A.B.C.D:PORT` in its one canonical spelling (decimal, no leading
/// zeros), or `None`. One pass: every heartbeat parses its address.
fn parse_tcp4(addr: &str) -> Option<Packed> {
    let b = addr.strip_prefix("tcp@")?.as_bytes();
    // Five numbers: four octets after `.`, `.`, `.`, then the port after `:`.
    let mut parts = [0u32; 5];
    let (mut part, mut digits) = (0, 0);
    for &c in b {
        match c {
            b'0'..=b'9' => {
                // A leading zero, or more digits than a port has.
                if (digits == 1 && parts[part] == 0) || digits == 5 {
                    return None;
                }
                parts[part] = parts[part] * 10 + u32::from(c - b'0');
                digits += 1;
            }
            b'.' if part < 3 && digits > 0 => (part, digits) = (part + 1, 0),
            b':' if part == 3 && digits > 0 => (part, digits) = (4, 0),
            _ => return None,
        }
    }
    let [a, b, c, d, port] = parts;
    if part != 4 || digits == 0 || a.max(b).max(c).max(d) > 255 || port > 65535 {
        return None;
    }
    Some(Packed::Tcp4 {
        ip: [a as u8, b as u8, c as u8, d as u8],
        port: port as u16,
    })
}

/// What a heartbeat reads and writes: one slot of the hash table.
#[repr(C, align(32))]
struct Hot {
    packed: Packed,
    /// Position of the entry's `Cold` part.
    cold: u32,
    /// The deadline when the TTL is non-zero, else the time of the last
    /// beat: the other follows from the TTL.
    stamp: Tick,
    /// TTL nanoseconds above `HAS_META` and the weight.
    ttl_weight: u64,
}

// Two slots a cache line, never one across two.
const _: () = assert!(std::mem::size_of::<Hot>() == 32);

impl Hot {
    fn ttl_ns(&self) -> u64 {
        self.ttl_weight >> TTL_SHIFT
    }

    fn deadline(&self) -> Option<Tick> {
        (self.ttl_ns() != 0).then_some(self.stamp)
    }
}

/// What only registrations, label changes, TTL cuts and expiry touch.
#[derive(Default)]
struct Cold {
    /// Time of the entry's live item in the expiry queue; 0 when none (a
    /// deadline is never 0: it lies a TTL after the registry's start).
    queued: Tick,
    #[allow(
        clippy::box_collection,
        reason = "8 bytes instead of 24; labels are rare"
    )]
    meta: Option<Box<BTreeMap<String, String>>>,
}

static NO_META: BTreeMap<String, String> = BTreeMap::new();

/// What became of a due expiry item.
pub(super) enum Due {
    /// Superseded: the entry is gone, renewed with a shorter TTL (a newer
    /// item exists) or now never expires.
    Stale,
    /// The deadline passed: remove the entry.
    Expired,
    /// Renewed meanwhile: queue the item again for this time.
    Requeue(Tick),
}

/// One service's entries; see the module docs for the layout.
pub(super) struct Entries {
    table: HashTable<Hot>,
    /// Indexed by `Hot::cold`; freed places are reused.
    cold: Vec<Cold>,
    free: Vec<u32>,
    texts: Texts,
    hasher: RandomState,
}

/// One entry, read-only.
pub(super) struct View<'a> {
    hot: &'a Hot,
    cold: &'a Cold,
    texts: &'a Texts,
}

impl fmt::Display for View<'_> {
    /// The address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_addr(f, &self.hot.packed, self.texts.of(&self.hot.packed))
    }
}

impl View<'_> {
    /// The address, owned: cheap to take under the lock (a copy, and an
    /// allocation only for a long address), printed after it.
    pub(super) fn key(&self) -> Key<'static> {
        Key {
            packed: self.hot.packed,
            long: self
                .texts
                .of(&self.hot.packed)
                .map(|l| Cow::Owned(l.to_string())),
        }
    }

    #[cfg(test)] // the table copies times with `raw_times`
    pub(super) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.hot.ttl_ns())
    }

    pub(super) fn weight(&self) -> u32 {
        (self.hot.ttl_weight & WEIGHT_MASK) as u32
    }

    pub(super) fn meta(&self) -> &BTreeMap<String, String> {
        if self.hot.ttl_weight & HAS_META == 0 {
            return &NO_META;
        }
        self.cold.meta.as_deref().unwrap_or(&NO_META)
    }

    /// `None` for an entry that never expires.
    #[cfg(test)] // the table copies times with `raw_times`
    pub(super) fn deadline(&self) -> Option<Tick> {
        self.hot.deadline()
    }

    /// The TTL in nanoseconds and the stamp they decode from (see
    /// [`Stamp`]), for copying many entries out cheaply.
    pub(super) fn raw_times(&self) -> Stamp {
        Stamp {
            ttl_ns: self.hot.ttl_ns(),
            stamp: self.hot.stamp,
        }
    }
}

/// An entry's TTL and stamp: the deadline when the TTL is non-zero, else
/// the time of the last beat.
#[derive(Clone, Copy)]
pub(super) struct Stamp {
    ttl_ns: u64,
    stamp: Tick,
}

impl Stamp {
    pub(super) fn ttl(self) -> Duration {
        Duration::from_nanos(self.ttl_ns)
    }

    pub(super) fn deadline(self) -> Option<Tick> {
        (self.ttl_ns != 0).then_some(self.stamp)
    }

    pub(super) fn last_beat(self) -> Tick {
        self.stamp.saturating_sub(self.ttl_ns)
    }
}

impl Entries {
    pub(super) fn new(hasher: RandomState) -> Entries {
        Entries {
            table: HashTable::new(),
            cold: Vec::new(),
            free: Vec::new(),
            texts: Texts::default(),
            hasher,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The bucket of `key`, if present; valid until the next insert or
    /// removal.
    pub(super) fn find(&self, key: &Key<'_>) -> Option<usize> {
        let texts = &self.texts;
        let hash = key.hash(&self.hasher);
        let packed = key.packed.with_digest(hash);
        self.table.find_bucket_index(hash, |h| {
            h.packed == packed && (key.long.is_none() || texts.of(&h.packed) == key.long.as_deref())
        })
    }

    fn slot(&mut self, bucket: usize) -> (&mut Hot, &mut Cold) {
        let hot = self
            .table
            .get_bucket_mut(bucket)
            .expect("a bucket from find");
        let cold = &mut self.cold[hot.cold as usize];
        (hot, cold)
    }

    #[cfg(test)]
    pub(super) fn view(&self, bucket: usize) -> View<'_> {
        let hot = self.table.get_bucket(bucket).expect("a bucket from find");
        View {
            hot,
            cold: &self.cold[hot.cold as usize],
            texts: &self.texts,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = View<'_>> {
        self.table.iter().map(|hot| View {
            hot,
            cold: &self.cold[hot.cold as usize],
            texts: &self.texts,
        })
    }

    /// A heartbeat for the entry in `bucket` at `now`. Returns whether the
    /// weight or labels changed, and the time of an expiry item to queue,
    /// if any.
    ///
    /// With the same or a longer TTL the new deadline is past the queued
    /// item, which is re-queued when it comes due, so only a shorter TTL
    /// (or a first one) reads the queue bookkeeping.
    pub(super) fn renew(
        &mut self,
        bucket: usize,
        ttl: Duration,
        weight: u32,
        meta: &BTreeMap<String, String>,
        now: Tick,
    ) -> (bool, Option<Tick>) {
        let hot = self
            .table
            .get_bucket_mut(bucket)
            .expect("a bucket from find");
        let old_ttl = hot.ttl_ns();
        let ns = ttl_nanos(ttl);
        hot.stamp = now + ns;
        hot.ttl_weight = ns << TTL_SHIFT | (hot.ttl_weight & (WEIGHT_MASK | HAS_META));
        let has_meta = hot.ttl_weight & HAS_META != 0;
        let cold = hot.cold as usize;
        let changed = (hot.ttl_weight & WEIGHT_MASK) != u64::from(weight)
            || ((has_meta || !meta.is_empty())
                && self.cold[cold].meta.as_deref().unwrap_or(&NO_META) != meta);
        if changed {
            let (hot, cold) = self.slot(bucket);
            set_labels(hot, cold, weight, meta);
        }
        let mut queue = None;
        if ns != 0 && (old_ttl == 0 || ns < old_ttl) {
            let cold = &mut self.cold[cold];
            let deadline = now + ns;
            if cold.queued == 0 || deadline < cold.queued {
                cold.queued = deadline;
                queue = Some(deadline);
            }
        }
        (changed, queue)
    }

    /// Adds an absent `key` beating at `now`; returns its deadline, the time
    /// of the expiry item to queue for it.
    pub(super) fn insert(
        &mut self,
        key: Key<'_>,
        ttl: Duration,
        weight: u32,
        meta: &BTreeMap<String, String>,
        now: Tick,
    ) -> Option<Tick> {
        let ns = ttl_nanos(ttl);
        self.push(key, ns, now + ns, weight, meta)
    }

    /// Adds an absent `key` with `left` of its `ttl` remaining at `now`.
    pub(super) fn insert_restored(
        &mut self,
        key: Key<'_>,
        ttl: Duration,
        left: Option<Duration>,
        weight: u32,
        meta: &BTreeMap<String, String>,
        now: Tick,
    ) -> Option<Tick> {
        let ns = ttl_nanos(ttl);
        let stamp = match left {
            Some(left) if ns != 0 => now + ttl_nanos(left.min(ttl)),
            _ => now + ns,
        };
        self.push(key, ns, stamp, weight, meta)
    }

    fn push(
        &mut self,
        key: Key<'_>,
        ttl_ns: u64,
        stamp: Tick,
        weight: u32,
        meta: &BTreeMap<String, String>,
    ) -> Option<Tick> {
        let hash = key.hash(&self.hasher);
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.cold.push(Cold::default());
                u32::try_from(self.cold.len() - 1).expect("max_entries is validated to fit in u32")
            }
        };
        let mut packed = key.packed.with_digest(hash);
        if let (Packed::Long { class, at, .. }, Some(text)) = (&mut packed, &key.long) {
            (*class, *at) = self.texts.put(text);
        }
        let mut hot = Hot {
            packed,
            cold: index,
            stamp,
            ttl_weight: ttl_ns << TTL_SHIFT,
        };
        let deadline = hot.deadline();
        let cold = &mut self.cold[index as usize];
        *cold = Cold {
            queued: deadline.unwrap_or(0),
            meta: None,
        };
        set_labels(&mut hot, cold, weight, meta);
        let (texts, hasher) = (&self.texts, &self.hasher);
        self.table.insert_unique(hash, hot, |h| {
            hash_of(&h.packed, texts.of(&h.packed), hasher)
        });
        deadline
    }

    /// Removes `key`; `false` when it was not there.
    pub(super) fn remove(&mut self, key: &Key<'_>) -> bool {
        let Some(bucket) = self.find(key) else {
            return false;
        };
        let Ok(found) = self.table.get_bucket_entry(bucket) else {
            return false;
        };
        let hot = found.remove().0;
        self.cold[hot.cold as usize] = Cold::default();
        self.free.push(hot.cold);
        self.texts.free(&hot.packed);
        true
    }

    /// Settles the expiry item of `key` due at `at`; `now` has reached it.
    pub(super) fn due(&mut self, key: &Key<'_>, at: Tick, now: Tick) -> Due {
        let Some(bucket) = self.find(key) else {
            return Due::Stale;
        };
        let (hot, cold) = self.slot(bucket);
        if cold.queued != at {
            return Due::Stale;
        }
        match hot.deadline() {
            Some(d) if d <= now => Due::Expired,
            Some(d) => {
                cold.queued = d;
                Due::Requeue(d)
            }
            None => {
                cold.queued = 0;
                Due::Stale
            }
        }
    }
}

fn set_labels(hot: &mut Hot, cold: &mut Cold, weight: u32, meta: &BTreeMap<String, String>) {
    debug_assert!(u64::from(weight) <= WEIGHT_MASK, "weights are validated");
    let flag = if meta.is_empty() { 0 } else { HAS_META };
    hot.ttl_weight =
        (hot.ttl_weight & !(WEIGHT_MASK | HAS_META)) | flag | (u64::from(weight) & WEIGHT_MASK);
    cold.meta = (!meta.is_empty()).then(|| Box::new(meta.clone()));
}

/// Nanoseconds of a TTL the registry accepted (at most [`TTL_LIMIT`]).
fn ttl_nanos(ttl: Duration) -> u64 {
    debug_assert!(
        ttl <= TTL_LIMIT,
        "TTLs are clamped to the registry's bounds"
    );
    ttl.min(TTL_LIMIT).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn meta(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn every_address_prints_back_as_it_came() {
        let long = format!("tcp@{}.example.org:7001", "host".repeat(10));
        let cases = [
            ("tcp@10.0.1.2:7001", true),
            ("tcp@255.255.255.255:65535", true),
            ("tcp@0.0.0.0:0", true),
            ("tcp@010.0.1.2:7001", false),
            ("tcp@10.0.1.2:07001", false),
            ("tcp@10.0.1.256:7001", false),
            ("tcp@10.0.1.2:65536", false),
            ("tcp@10.0.1:7001", false),
            ("tcp@10.0.1.2.3:7001", false),
            ("tcp@10.0.1.2:", false),
            ("tcp@10.0.1.2:7001x", false),
            ("tcp@1.2.3.4:1234567", false),
            ("udp@10.0.1.2:7001", false),
            ("a", false),
            ("", false),
            ("tcp@[::1]:7001", false),
            (long.as_str(), false),
        ];
        for (addr, packed) in cases {
            let key = Key::new(addr);
            assert_eq!(key.to_string(), addr);
            assert_eq!(matches!(key.packed, Packed::Tcp4 { .. }), packed, "{addr}");
            assert_eq!(key.long.is_some(), addr.len() > SHORT && !packed, "{addr}");
            assert_eq!(key, Key::new(addr));
        }
        assert_ne!(Key::new("tcp@10.0.1.2:7001"), Key::new("tcp@10.0.1.2:7002"));
    }

    #[test]
    fn removal_keeps_every_other_entry_findable() {
        let mut e = Entries::new(RandomState::default());
        // Packed, short and long addresses alike.
        let addrs: Vec<String> = (0..200)
            .map(|i| match i % 3 {
                0 => format!("tcp@10.0.0.{}:{i}", i % 7),
                1 => format!("u@{i}"),
                _ => format!("tcp@host-{i}.example.org:7001"),
            })
            .collect();
        for a in &addrs {
            e.insert(Key::new(a), Duration::from_secs(5), 1, &NO_META, 1);
        }
        // Every other one: all three kinds.
        for a in addrs.iter().step_by(2) {
            assert!(e.remove(&Key::new(a)));
            assert!(!e.remove(&Key::new(a)), "{a} removed twice");
        }
        for (n, a) in addrs.iter().enumerate() {
            let i = e.find(&Key::new(a));
            assert_eq!(i.is_some(), n % 2 != 0, "{a}");
            if let Some(i) = i {
                assert_eq!(e.view(i).to_string(), *a);
            }
        }
        assert_eq!(e.len(), 100);
        // Freed places are reused, and the entries there are whole.
        let cold_places = e.cold.len();
        let text_bytes: Vec<usize> = e.texts.arenas.iter().map(|a| a.bytes.len()).collect();
        for a in addrs.iter().step_by(2) {
            e.insert(Key::new(a), Duration::from_secs(5), 1, &NO_META, 1);
        }
        assert_eq!((e.len(), e.cold.len()), (200, cold_places));
        let after: Vec<usize> = e.texts.arenas.iter().map(|a| a.bytes.len()).collect();
        assert_eq!(after, text_bytes);
        let mut listed: Vec<String> = e.iter().map(|v| v.to_string()).collect();
        listed.sort();
        let mut expected = addrs.clone();
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_renewal_moves_the_deadline_and_reports_label_changes() {
        let mut e = Entries::new(RandomState::default());
        let key = Key::new("tcp@10.0.0.1:7001");
        let ttl = Duration::from_secs(5);
        assert_eq!(
            e.insert(key.clone(), ttl, 2, &NO_META, 10),
            Some(10 + 5 * S)
        );
        let i = e.find(&key).unwrap();
        // Same TTL: no queue work.
        assert_eq!(e.renew(i, ttl, 2, &NO_META, 20), (false, None));
        assert_eq!(
            (e.view(i).deadline(), e.view(i).raw_times().last_beat()),
            (Some(20 + 5 * S), 20)
        );
        // Labels.
        assert_eq!(e.renew(i, ttl, 3, &NO_META, 30), (true, None));
        assert_eq!(e.renew(i, ttl, 3, &meta("zone", "a"), 30), (true, None));
        assert_eq!(e.renew(i, ttl, 3, &meta("zone", "a"), 30), (false, None));
        assert_eq!(e.view(i).meta(), &meta("zone", "a"));
        assert_eq!(e.renew(i, ttl, 3, &NO_META, 30), (true, None));
        assert_eq!((e.view(i).weight(), e.view(i).meta().len()), (3, 0));
        // A shorter TTL queues an earlier item; the old one goes stale.
        let short = Duration::from_secs(1);
        assert_eq!(e.renew(i, short, 3, &NO_META, 40), (false, Some(40 + S)));
        assert!(matches!(e.due(&key, 10 + 5 * S, 10 + 5 * S), Due::Stale));
        assert!(matches!(e.due(&key, 40 + S, 40 + S), Due::Expired));
        // Never expiring, then a TTL again: a fresh item.
        assert_eq!(e.renew(i, Duration::ZERO, 3, &NO_META, 50), (false, None));
        assert_eq!(e.view(i).deadline(), None);
        assert_eq!(
            e.renew(i, ttl, 3, &NO_META, 60),
            (false, None),
            "the 41 s item is live"
        );
        assert!(matches!(e.due(&key, 40 + S, 40 + S), Due::Requeue(d) if d == 60 + 5 * S));
        // The largest TTL and weight do not spill into each other.
        let (max_ttl, max_weight) = (TTL_LIMIT, super::super::MAX_WEIGHT);
        e.renew(i, max_ttl, max_weight, &meta("k", "v"), 70);
        let v = e.view(i);
        assert_eq!(
            (v.ttl(), v.weight(), v.meta()),
            (max_ttl, max_weight, &meta("k", "v"))
        );
    }

    #[test]
    fn a_restored_entry_keeps_what_was_left_of_its_ttl() {
        let mut e = Entries::new(RandomState::default());
        let (a, b) = (Key::new("a"), Key::new("b"));
        let ten = Duration::from_secs(10);
        let d = e.insert_restored(a, ten, Some(Duration::from_secs(3)), 1, &NO_META, 50);
        assert_eq!(d, Some(50 + 3 * S));
        let d = e.insert_restored(b.clone(), Duration::ZERO, None, 1, &NO_META, 50);
        assert_eq!(d, None);
        assert_eq!(e.view(e.find(&b).unwrap()).deadline(), None);
    }
}
