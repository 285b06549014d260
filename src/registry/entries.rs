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
//! TTL and the weight; 4 MB for 100 000 entries. Labels and the place of
//! the entry in the expiry queue live in `cold`, which a plain heartbeat
//! does not read; the text of an address too long to pack lives in
//! `texts`, where its slot points straight at it.
//!
//! The expiry queue is a heap of (deadline, cold place) in which each cold
//! part records its item's position, so an entry has one item at most: a
//! removal takes it out and an earlier deadline moves it up, and churn
//! leaves no stale items behind. A later deadline (a renewal) leaves the
//! item where it is; it is moved down when it comes due. Every part is
//! rebuilt to fit once the live entries fill a quarter of it, so a
//! service's memory follows its live entries, not its history.

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

    /// Frees the place of a `Long` address; returns whether its arena is
    /// now mostly free.
    fn free(&mut self, packed: &Packed) -> bool {
        let Packed::Long { class, at, .. } = *packed else {
            return false;
        };
        let class = usize::from(class);
        let arena = &mut self.arenas[class];
        arena.free.push(at);
        let places = arena.bytes.len() / PLACES[class];
        sparse(places, places - arena.free.len())
    }
}

/// Room below which nothing is given back: small tables are not worth
/// rebuilding.
const MIN_ROOM: usize = 64;

/// Whether `reserved` places hold so few `live` ones that rebuilding
/// pays: at a quarter, so what a rebuild costs is paid for by the removals
/// since the last one, and growing again does not undo it at once.
fn sparse(reserved: usize, live: usize) -> bool {
    reserved > MIN_ROOM && live * 4 <= reserved
}

/// The position of an entry that has no expiry item.
const NOT_QUEUED: u32 = u32::MAX;

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
struct Cold {
    /// The table hash of the address: finds the slot of a queued entry.
    hash: u64,
    /// Position of the entry's item in the expiry queue, or `NOT_QUEUED`.
    queued: u32,
    #[allow(
        clippy::box_collection,
        reason = "8 bytes instead of 24; labels are rare"
    )]
    meta: Option<Box<BTreeMap<String, String>>>,
}

impl Default for Cold {
    fn default() -> Cold {
        Cold {
            hash: 0,
            queued: NOT_QUEUED,
            meta: None,
        }
    }
}

static NO_META: BTreeMap<String, String> = BTreeMap::new();

/// An item of the expiry queue: at `at`, look at the entry whose cold part
/// is at `cold`. Its deadline is `at` or later (renewals move deadlines on
/// without moving items).
#[derive(Clone, Copy)]
struct Item {
    at: Tick,
    cold: u32,
}

/// What a service reserves, live or free.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// Hash-table slots.
    pub(super) slots: usize,
    /// Places for cold parts, and the free list.
    pub(super) places: usize,
    /// Bytes for long addresses, and their free lists.
    pub(super) text_bytes: usize,
    /// Expiry items.
    pub(super) queued: usize,
    /// Room for expiry items.
    pub(super) queue_room: usize,
}

/// One service's entries; see the module docs for the layout.
pub(super) struct Entries {
    table: HashTable<Hot>,
    /// Indexed by `Hot::cold`; freed places are reused.
    cold: Vec<Cold>,
    free: Vec<u32>,
    texts: Texts,
    /// A binary heap by `at`, the earliest first; see the module docs.
    queue: Vec<Item>,
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
            queue: Vec::new(),
            hasher,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// What this service reserves, live or free.
    pub(super) fn room(&self) -> Room {
        Room {
            slots: self.table.capacity(),
            places: self.cold.capacity() + self.free.capacity(),
            text_bytes: self
                .texts
                .arenas
                .iter()
                .map(|a| a.bytes.capacity() + a.free.capacity() * 4)
                .sum(),
            queued: self.queue.len(),
            queue_room: self.queue.capacity(),
        }
    }

    /// The time of the earliest expiry item, if any.
    pub(super) fn next_due(&self) -> Option<Tick> {
        self.queue.first().map(|i| i.at)
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
    /// weight or labels changed, and whether the expiry queue did (then its
    /// earliest time may have).
    ///
    /// With the same or a longer TTL the new deadline is past the queued
    /// item, which is moved when it comes due, so only a shorter TTL (or a
    /// first one) reads the queue.
    pub(super) fn renew(
        &mut self,
        bucket: usize,
        ttl: Duration,
        weight: u32,
        meta: &BTreeMap<String, String>,
        now: Tick,
    ) -> (bool, bool) {
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
        let mut queued = false;
        if ns != 0 && (old_ttl == 0 || ns < old_ttl) {
            let deadline = now + ns;
            let pos = self.cold[cold].queued;
            if pos == NOT_QUEUED {
                self.enqueue(cold as u32, deadline);
                queued = true;
            } else if deadline < self.queue[pos as usize].at {
                self.queue[pos as usize].at = deadline;
                self.sift_up(pos as usize);
                queued = true;
            }
        }
        (changed, queued)
    }

    /// Adds an absent `key` beating at `now`, queued for expiry; returns its
    /// deadline.
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
            hash,
            ..Cold::default()
        };
        set_labels(&mut hot, cold, weight, meta);
        let (texts, hasher) = (&self.texts, &self.hasher);
        self.table.insert_unique(hash, hot, |h| {
            hash_of(&h.packed, texts.of(&h.packed), hasher)
        });
        if let Some(at) = deadline {
            self.enqueue(index, at);
        }
        deadline
    }

    /// Removes `key`; `false` when it was not there.
    pub(super) fn remove(&mut self, key: &Key<'_>) -> bool {
        match self.find(key) {
            Some(bucket) => self.remove_at(bucket),
            None => false,
        }
    }

    /// Removes the entry in `bucket`.
    ///
    /// Once the entries fill a quarter of the room the service holds (its
    /// hash table, cold places, or the arena of a long address), the room
    /// is rebuilt to fit: a service keeps no memory for entries that left.
    fn remove_at(&mut self, bucket: usize) -> bool {
        let Ok(found) = self.table.get_bucket_entry(bucket) else {
            return false;
        };
        let hot = found.remove().0;
        let pos = self.cold[hot.cold as usize].queued;
        if pos != NOT_QUEUED {
            self.dequeue(pos as usize);
        }
        self.cold[hot.cold as usize] = Cold::default();
        self.free.push(hot.cold);
        let sparse_texts = self.texts.free(&hot.packed);
        let len = self.table.len();
        if sparse_texts || sparse(self.table.capacity(), len) || sparse(self.cold.len(), len) {
            self.compact();
        }
        true
    }

    /// Rebuilds the hash table, the cold places, the text arenas and the
    /// expiry queue to fit the live entries: O(entries), paid for by the
    /// removals that made them sparse.
    fn compact(&mut self) {
        let mut per_class = [0usize; PLACES.len()];
        for hot in self.table.iter() {
            if let Packed::Long { class, .. } = hot.packed {
                per_class[usize::from(class)] += 1;
            }
        }
        let mut texts = Texts::default();
        for (arena, (n, size)) in texts.arenas.iter_mut().zip(per_class.iter().zip(PLACES)) {
            arena.bytes.reserve_exact(n * size);
        }
        let mut cold = Vec::with_capacity(self.table.len());
        for hot in self.table.iter_mut() {
            let part = std::mem::take(&mut self.cold[hot.cold as usize]);
            hot.cold = u32::try_from(cold.len()).expect("fewer than 2^32 entries");
            if part.queued != NOT_QUEUED {
                self.queue[part.queued as usize].cold = hot.cold;
            }
            cold.push(part);
            if let Some(text) = self.texts.of(&hot.packed)
                && let Packed::Long { at, .. } = &mut hot.packed
            {
                *at = texts.put(text).1;
            }
        }
        self.cold = cold;
        self.free = Vec::new();
        self.texts = texts;
        self.queue.shrink_to_fit();
        let (texts, hasher) = (&self.texts, &self.hasher);
        self.table
            .shrink_to(0, |h| hash_of(&h.packed, texts.of(&h.packed), hasher));
    }

    /// Settles the expiry items due at `now`: an entry whose deadline has
    /// passed is removed and its address handed to `expired`; a renewed
    /// one's item moves to its deadline; one that no longer expires leaves
    /// the queue. Returns how many expired.
    pub(super) fn expire(&mut self, now: Tick, mut expired: impl FnMut(Key<'static>)) -> usize {
        let mut n = 0;
        while let Some(&Item { at, cold }) = self.queue.first() {
            if at > now {
                break;
            }
            let hash = self.cold[cold as usize].hash;
            let bucket = self
                .table
                .find_bucket_index(hash, |h| h.cold == cold)
                .expect("a queued entry is in the table");
            let hot = self.table.get_bucket(bucket).expect("found above");
            match hot.deadline() {
                Some(d) if d <= now => {
                    let long = self
                        .texts
                        .of(&hot.packed)
                        .map(|l| Cow::Owned(l.to_string()));
                    expired(Key {
                        packed: hot.packed,
                        long,
                    });
                    self.remove_at(bucket);
                    n += 1;
                }
                Some(d) => {
                    self.queue[0].at = d;
                    self.sift_down(0);
                }
                None => self.dequeue(0),
            }
        }
        n
    }

    /// Queues an item for the entry whose cold part is at `cold`.
    fn enqueue(&mut self, cold: u32, at: Tick) {
        self.queue.push(Item { at, cold });
        self.sift_up(self.queue.len() - 1);
    }

    /// Takes the item at `pos` out of the queue.
    fn dequeue(&mut self, pos: usize) {
        let gone = self.queue[pos];
        self.cold[gone.cold as usize].queued = NOT_QUEUED;
        let last = self.queue.pop().expect("pos is in the queue");
        if pos < self.queue.len() {
            self.place(pos, last);
            if last.at < gone.at {
                self.sift_up(pos);
            } else {
                self.sift_down(pos);
            }
        }
    }

    /// Puts `item` at `pos` and tells its entry.
    fn place(&mut self, pos: usize, item: Item) {
        self.queue[pos] = item;
        self.cold[item.cold as usize].queued = pos as u32;
    }

    fn sift_up(&mut self, mut pos: usize) {
        let item = self.queue[pos];
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.queue[parent].at <= item.at {
                break;
            }
            self.place(pos, self.queue[parent]);
            pos = parent;
        }
        self.place(pos, item);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let item = self.queue[pos];
        let len = self.queue.len();
        loop {
            let mut child = 2 * pos + 1;
            if child >= len {
                break;
            }
            if child + 1 < len && self.queue[child + 1].at < self.queue[child].at {
                child += 1;
            }
            if self.queue[child].at >= item.at {
                break;
            }
            self.place(pos, self.queue[child]);
            pos = child;
        }
        self.place(pos, item);
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
    fn a_sparse_service_is_rebuilt_to_fit_and_keeps_its_entries() {
        let mut e = Entries::new(RandomState::default());
        let addrs: Vec<String> = (0..3000)
            .map(|i| match i % 3 {
                0 => format!("tcp@10.0.{}.{}:7001", i / 256, i % 256),
                1 => format!("u@{i}"),
                _ => format!("tcp@host-{i}.{}.example.org:7001", "x".repeat(i % 200)),
            })
            .collect();
        for (i, a) in addrs.iter().enumerate() {
            let labels = if i % 2 == 0 {
                meta("n", a)
            } else {
                NO_META.clone()
            };
            e.insert(
                Key::new(a),
                Duration::from_secs(5),
                1 + i as u32 % 7,
                &labels,
                i as Tick,
            );
        }
        let full = e.room();
        // Keep every tenth: the last removals find the room sparse.
        for a in addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 != 0)
            .map(|(_, a)| a)
        {
            assert!(e.remove(&Key::new(a)), "{a}");
        }
        e.check_queue();
        // Between rebuilds the live entries fill from a quarter of the
        // room to all of it, and the free list grows beside them.
        let room = e.room();
        let fits = |n: usize| n <= 8 * e.len();
        assert!(
            fits(room.slots)
                && fits(room.places)
                && fits(room.queue_room)
                && room.queued == e.len(),
            "{room:?} kept of {full:?}"
        );
        assert!(
            room.text_bytes * 4 <= full.text_bytes,
            "{room:?} kept of {full:?}"
        );
        for (i, a) in addrs.iter().enumerate() {
            let found = e.find(&Key::new(a));
            assert_eq!(found.is_some(), i % 10 == 0, "{a}");
            let Some(b) = found else { continue };
            let v = e.view(b);
            let labels = if i % 2 == 0 {
                meta("n", a)
            } else {
                NO_META.clone()
            };
            assert_eq!(
                (v.to_string(), v.weight(), v.meta(), v.deadline()),
                (
                    a.clone(),
                    1 + i as u32 % 7,
                    &labels,
                    Some(i as Tick + 5 * S)
                )
            );
        }
        // And it grows again as before.
        for a in addrs.iter().skip(5).step_by(10) {
            e.insert(Key::new(a), Duration::from_secs(5), 1, &NO_META, 1);
        }
        assert_eq!(e.len(), 600);
        for a in addrs.iter().step_by(5) {
            assert!(e.find(&Key::new(a)).is_some(), "{a}");
        }
    }

    impl Entries {
        /// Asserts the queue is a heap by time, each item pointing at a
        /// queued entry that points back, one item an entry at most, and
        /// no item after its entry's deadline.
        fn check_queue(&self) {
            for (pos, item) in self.queue.iter().enumerate() {
                if pos > 0 {
                    assert!(
                        self.queue[(pos - 1) / 2].at <= item.at,
                        "heap order at {pos}"
                    );
                }
                assert_eq!(self.cold[item.cold as usize].queued as usize, pos);
            }
            for hot in self.table.iter() {
                let at = self.cold[hot.cold as usize].queued;
                match hot.deadline() {
                    Some(d) => {
                        assert!(self.queue[at as usize].at <= d, "queued after its deadline")
                    }
                    None => assert!(at == NOT_QUEUED || (at as usize) < self.queue.len()),
                }
            }
            assert!(self.queue.len() <= self.table.len());
        }

        fn expire_all(&mut self, now: Tick) -> Vec<String> {
            let mut gone = Vec::new();
            self.expire(now, |k| gone.push(k.to_string()));
            self.check_queue();
            gone
        }
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
        assert_eq!(e.next_due(), Some(10 + 5 * S));
        let i = e.find(&key).unwrap();
        // Same TTL: no queue work.
        assert_eq!(e.renew(i, ttl, 2, &NO_META, 20), (false, false));
        assert_eq!(
            (e.view(i).deadline(), e.view(i).raw_times().last_beat()),
            (Some(20 + 5 * S), 20)
        );
        // Labels.
        assert_eq!(e.renew(i, ttl, 3, &NO_META, 30), (true, false));
        assert_eq!(e.renew(i, ttl, 3, &meta("zone", "a"), 30), (true, false));
        assert_eq!(e.renew(i, ttl, 3, &meta("zone", "a"), 30), (false, false));
        assert_eq!(e.view(i).meta(), &meta("zone", "a"));
        assert_eq!(e.renew(i, ttl, 3, &NO_META, 30), (true, false));
        assert_eq!((e.view(i).weight(), e.view(i).meta().len()), (3, 0));
        // A shorter TTL moves its one item earlier.
        let short = Duration::from_secs(1);
        assert_eq!(e.renew(i, short, 3, &NO_META, 40), (false, true));
        assert_eq!((e.next_due(), e.queue.len()), (Some(40 + S), 1));
        assert!(e.expire_all(40 + S - 1).is_empty());
        assert_eq!(e.expire_all(40 + S), ["tcp@10.0.0.1:7001"]);
        assert!(e.is_empty() && e.queue.is_empty());
        // Never expiring, then a TTL again: the old item is moved when it
        // comes due.
        e.insert(key.clone(), ttl, 3, &NO_META, 50);
        let i = e.find(&key).unwrap();
        assert_eq!(e.renew(i, Duration::ZERO, 3, &NO_META, 50), (false, false));
        assert_eq!(e.view(i).deadline(), None);
        assert_eq!(
            e.renew(i, ttl, 3, &NO_META, 60),
            (false, false),
            "the item due at 50 + 5 s is still queued"
        );
        assert!(e.expire_all(50 + 5 * S).is_empty());
        assert_eq!(e.next_due(), Some(60 + 5 * S));
        // Never expiring: its item leaves the queue when it comes due.
        let i = e.find(&key).unwrap();
        e.renew(i, Duration::ZERO, 3, &NO_META, 70);
        assert!(e.expire_all(60 + 5 * S).is_empty());
        assert_eq!((e.next_due(), e.len()), (None, 1));
        // The largest TTL and weight do not spill into each other.
        let i = e.find(&key).unwrap();
        let (max_ttl, max_weight) = (TTL_LIMIT, super::super::MAX_WEIGHT);
        e.renew(i, max_ttl, max_weight, &meta("k", "v"), 70);
        let v = e.view(i);
        assert_eq!(
            (v.ttl(), v.weight(), v.meta()),
            (max_ttl, max_weight, &meta("k", "v"))
        );
    }

    #[test]
    fn the_queue_stays_whole_through_random_operations() {
        let mut e = Entries::new(RandomState::default());
        let addrs: Vec<String> = (0..1000)
            .map(|i| format!("tcp@host-{i}.example.org:1"))
            .collect();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut now = 1;
        let mut rebuilds = 0;
        for step in 0..20_000 {
            let places = e.cold.len();
            // Long TTLs for a while, then short ones: the service fills up
            // and empties out, and is rebuilt on the way down.
            let long = step / 4000 % 2 == 0;
            let a = &addrs[next(addrs.len() as u64) as usize];
            let unit = if long { 7000 } else { 70 };
            let ttl = match next(64) {
                0 => Duration::ZERO,
                _ => Duration::from_millis((1 + next(3)) * unit),
            };
            match (next(8), e.find(&Key::new(a))) {
                (0..=4, Some(i)) => drop(e.renew(i, ttl, 1, &NO_META, now)),
                (0..=4, None) => drop(e.insert(Key::new(a), ttl, 1, &NO_META, now)),
                (5, _) => drop(e.remove(&Key::new(a))),
                _ => {
                    now += next(1000) * 1_000_000;
                    for gone in e.expire_all(now) {
                        assert!(e.find(&Key::new(&gone)).is_none());
                    }
                    for v in e.iter() {
                        assert!(v.deadline().is_none_or(|d| d > now), "{v} was due");
                    }
                }
            }
            e.check_queue();
            rebuilds += usize::from(e.cold.len() < places);
        }
        assert!(rebuilds >= 4, "rebuilt {rebuilds} times");
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
