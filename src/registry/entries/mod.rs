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
//! TTL, the weight and the status; 4 MB for 100 000 entries. Labels and the place of
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
use std::time::Duration;

use hashbrown::HashTable;

use super::RandomState;
use crate::protocol::Status;

/// Largest TTL an entry can hold: its nanoseconds share a word with the
/// weight (48 bits, 78 h). A registry refuses bounds above it.
pub const TTL_LIMIT: Duration = Duration::from_secs(72 * 3600);

/// Time as nanoseconds since the registry was built: 8 bytes where an
/// `Instant` takes 16, and plain integer arithmetic.
pub(super) type Tick = u64;

/// Longest address kept inline when it is not an IPv4 `tcp@` address.
const SHORT: usize = 10;
const TTL_SHIFT: u32 = 16;
/// Weights are at most 10 000: 14 bits; one bit says the entry is
/// draining, one that labels exist.
const WEIGHT_MASK: u64 = 0x3fff;
const DRAINING: u64 = 0x4000;
const HAS_META: u64 = 0x8000;
const _: () = assert!(super::MAX_WEIGHT as u64 <= WEIGHT_MASK);

mod address;
#[cfg(test)]
mod tests;

pub(super) use address::Key;
use address::{PLACES, Packed, Texts, hash_of, write_addr};

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

/// What a heartbeat reads and writes: one slot of the hash table.
#[repr(C, align(32))]
struct Hot {
    packed: Packed,
    /// Position of the entry's `Cold` part.
    cold: u32,
    /// The deadline when the TTL is non-zero, else the time of the last
    /// beat: the other follows from the TTL.
    stamp: Tick,
    /// TTL nanoseconds above `HAS_META`, `DRAINING` and the weight.
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

    fn status(&self) -> Status {
        match self.ttl_weight & DRAINING {
            0 => Status::Up,
            _ => Status::Draining,
        }
    }

    fn set_status(&mut self, status: Status) {
        self.ttl_weight = match status {
            Status::Up => self.ttl_weight & !DRAINING,
            Status::Draining => self.ttl_weight | DRAINING,
        };
    }
}

/// What a put asks of an entry besides its address and TTL.
#[derive(Clone, Copy)]
pub(super) struct Labels<'a> {
    pub(super) weight: u32,
    pub(super) meta: &'a BTreeMap<String, String>,
    /// `None` keeps the status in force (up for a new entry): the seed's
    /// heartbeats never send one, and must not undo a drain.
    pub(super) status: Option<Status>,
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
    /// The labels of entries removed or relabelled since the table last
    /// took them ([`take_gone`](Entries::take_gone)): what filtered
    /// listings need to see an entry leave them (`registry/pairs.rs`).
    gone: Vec<BTreeMap<String, String>>,
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

    pub(super) fn status(&self) -> Status {
        self.hot.status()
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
            gone: Vec::new(),
        }
    }

    /// The labels that left since the last call (see `gone`).
    pub(super) fn take_gone(&mut self) -> Vec<BTreeMap<String, String>> {
        std::mem::take(&mut self.gone)
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
    /// weight, labels or status changed, and whether the expiry queue did
    /// (then its earliest time may have).
    ///
    /// With the same or a longer TTL the new deadline is past the queued
    /// item, which is moved when it comes due, so only a shorter TTL (or a
    /// first one) reads the queue.
    pub(super) fn renew(
        &mut self,
        bucket: usize,
        ttl: Duration,
        labels: &Labels<'_>,
        now: Tick,
    ) -> (bool, bool) {
        let Labels {
            weight,
            meta,
            status,
        } = *labels;
        let hot = self
            .table
            .get_bucket_mut(bucket)
            .expect("a bucket from find");
        let old_ttl = hot.ttl_ns();
        let ns = ttl_nanos(ttl);
        hot.stamp = now + ns;
        hot.ttl_weight = ns << TTL_SHIFT | (hot.ttl_weight & (WEIGHT_MASK | DRAINING | HAS_META));
        let moved = status.is_some_and(|s| s != hot.status());
        if let Some(s) = status {
            hot.set_status(s);
        }
        let has_meta = hot.ttl_weight & HAS_META != 0;
        let cold = hot.cold as usize;
        let relabelled = (hot.ttl_weight & WEIGHT_MASK) != u64::from(weight)
            || ((has_meta || !meta.is_empty())
                && self.cold[cold].meta.as_deref().unwrap_or(&NO_META) != meta);
        if relabelled {
            let (hot, cold) = self.slot(bucket);
            if let Some(old) = set_labels(hot, cold, weight, meta)
                && *old != *meta
            {
                self.gone.push(*old);
            }
        }
        let changed = moved || relabelled;
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

    /// A heartbeat that carries nothing but itself (a UDP renewal): the
    /// entry keeps its TTL, labels and status, and only its deadline moves,
    /// past its queued item, which is moved when it comes due.
    pub(super) fn touch(&mut self, bucket: usize, now: Tick) {
        let hot = self
            .table
            .get_bucket_mut(bucket)
            .expect("a bucket from find");
        hot.stamp = now + hot.ttl_ns();
    }

    /// Adds an absent `key` beating at `now`, queued for expiry; returns its
    /// deadline.
    pub(super) fn insert(
        &mut self,
        key: Key<'_>,
        ttl: Duration,
        labels: &Labels<'_>,
        now: Tick,
    ) -> Option<Tick> {
        let ns = ttl_nanos(ttl);
        self.push(key, ns, now + ns, labels)
    }

    /// Adds an absent `key` with `left` of its `ttl` remaining at `now`.
    pub(super) fn insert_restored(
        &mut self,
        key: Key<'_>,
        ttl: Duration,
        left: Option<Duration>,
        labels: &Labels<'_>,
        now: Tick,
    ) -> Option<Tick> {
        let ns = ttl_nanos(ttl);
        let stamp = match left {
            Some(left) if ns != 0 => now + ttl_nanos(left.min(ttl)),
            _ => now + ns,
        };
        self.push(key, ns, stamp, labels)
    }

    fn push(
        &mut self,
        key: Key<'_>,
        ttl_ns: u64,
        stamp: Tick,
        labels: &Labels<'_>,
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
        set_labels(&mut hot, cold, labels.weight, labels.meta);
        hot.set_status(labels.status.unwrap_or_default());
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
        let cold = std::mem::take(&mut self.cold[hot.cold as usize]);
        self.gone.extend(cold.meta.map(|meta| *meta));
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

/// Sets the weight and labels; returns the labels replaced, if any.
#[allow(
    clippy::box_collection,
    reason = "the cold part's own box, handed back as it was"
)]
fn set_labels(
    hot: &mut Hot,
    cold: &mut Cold,
    weight: u32,
    meta: &BTreeMap<String, String>,
) -> Option<Box<BTreeMap<String, String>>> {
    debug_assert!(u64::from(weight) <= WEIGHT_MASK, "weights are validated");
    let flag = if meta.is_empty() { 0 } else { HAS_META };
    hot.ttl_weight =
        (hot.ttl_weight & !(WEIGHT_MASK | HAS_META)) | flag | (u64::from(weight) & WEIGHT_MASK);
    std::mem::replace(
        &mut cold.meta,
        (!meta.is_empty()).then(|| Box::new(meta.clone())),
    )
}

/// Nanoseconds of a TTL the registry accepted (at most [`TTL_LIMIT`]).
fn ttl_nanos(ttl: Duration) -> u64 {
    debug_assert!(
        ttl <= TTL_LIMIT,
        "TTLs are clamped to the registry's bounds"
    );
    ttl.min(TTL_LIMIT).as_nanos() as u64
}
