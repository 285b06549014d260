//! The entries of one service, laid out for heartbeats.
//!
//! A heartbeat is a hash lookup under the table lock, so nothing overlaps
//! its cache misses: with 100 000 entries its cost is the latency of the
//! lines it touches, and that latency jumps once the data it lands in
//! outgrows the part of the last-level cache a process gets (a few MB on a
//! shared 2-core machine: 15 ns per random line within 4 MB, 120 ns and
//! more beyond 8 MB). So what a heartbeat reads is kept small and dense:
//!
//! - `hot`: 32 bytes an entry, the address (an IPv4 `tcp@` address packed
//!   in 6 bytes, other short ones inline), the deadline, the TTL and the
//!   weight; 3.2 MB for 100 000 entries, without holes;
//! - `index`: a hash table of 4-byte positions into `hot` (0.6 MB);
//! - `cold`: the expiry queue bookkeeping and the labels, which a plain
//!   heartbeat does not read.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
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
const SHORT: usize = 14;
const TTL_SHIFT: u32 = 16;
/// Weights are at most 10 000: 15 bits, and one bit says labels exist.
const WEIGHT_MASK: u64 = 0x7fff;
const HAS_META: u64 = 0x8000;

/// A server address in 16 bytes. Every address has exactly one form (an
/// address is `Tcp4` only when it prints back to the same text), so keys
/// are equal exactly when their addresses are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Tcp4 {
        ip: [u8; 4],
        port: u16,
    },
    Short {
        len: u8,
        buf: [u8; SHORT],
    },
    // Two boxes keep the key at 16 bytes; only long addresses pay the hop.
    #[allow(clippy::box_collection, reason = "a thin pointer in a 16-byte key")]
    Long(Box<Box<str>>),
}

impl Key {
    pub(super) fn new(addr: &str) -> Key {
        if let Some(key) = parse_tcp4(addr) {
            return key;
        }
        let bytes = addr.as_bytes();
        if bytes.len() <= SHORT {
            let mut buf = [0; SHORT];
            buf[..bytes.len()].copy_from_slice(bytes);
            Key::Short {
                len: bytes.len() as u8,
                buf,
            }
        } else {
            Key::Long(Box::new(addr.into()))
        }
    }
}

impl Hash for Key {
    // By hand: one word for a packed address instead of a length-prefixed
    // array, a tag and a port. Equal keys are the same variant, so they
    // hash alike.
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Tcp4 { ip, port } => {
                state.write_u64(u64::from(u32::from_be_bytes(*ip)) << 16 | u64::from(*port));
            }
            Key::Short { len, buf } => state.write(&buf[..usize::from(*len)]),
            Key::Long(s) => state.write(s.as_bytes()),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Tcp4 {
                ip: [a, b, c, d],
                port,
            } => write!(f, "tcp@{a}.{b}.{c}.{d}:{port}"),
            Key::Short { len, buf } => {
                f.write_str(std::str::from_utf8(&buf[..usize::from(*len)]).expect("from a str"))
            }
            Key::Long(s) => f.write_str(s),
        }
    }
}

/// `tcp@A.B.C.D:PORT` in its one canonical spelling (decimal, no leading
/// zeros), or `None`. One pass: every heartbeat parses its address.
fn parse_tcp4(addr: &str) -> Option<Key> {
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
    Some(Key::Tcp4 {
        ip: [a as u8, b as u8, c as u8, d as u8],
        port: port as u16,
    })
}

/// What a heartbeat reads and writes.
#[repr(C, align(32))]
struct Hot {
    key: Key,
    /// The deadline when the TTL is non-zero, else the time of the last
    /// beat: the other follows from the TTL.
    stamp: Tick,
    /// TTL nanoseconds above `HAS_META` and the weight.
    ttl_weight: u64,
}

// Two entries a cache line, never one across two.
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
    index: HashTable<u32>,
    hot: Vec<Hot>,
    cold: Vec<Cold>,
    hasher: RandomState,
}

/// One entry, read-only.
pub(super) struct View<'a> {
    hot: &'a Hot,
    cold: &'a Cold,
}

impl View<'_> {
    pub(super) fn key(&self) -> &Key {
        &self.hot.key
    }

    pub(super) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.hot.ttl_ns())
    }

    pub(super) fn weight(&self) -> u32 {
        (self.hot.ttl_weight & WEIGHT_MASK) as u32
    }

    pub(super) fn meta(&self) -> &BTreeMap<String, String> {
        self.cold.meta.as_deref().unwrap_or(&NO_META)
    }

    /// `None` for an entry that never expires.
    pub(super) fn deadline(&self) -> Option<Tick> {
        self.hot.deadline()
    }

    pub(super) fn last_beat(&self) -> Tick {
        self.hot.stamp.saturating_sub(self.hot.ttl_ns())
    }
}

impl Entries {
    pub(super) fn new(hasher: RandomState) -> Entries {
        Entries {
            index: HashTable::new(),
            hot: Vec::new(),
            cold: Vec::new(),
            hasher,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.hot.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }

    /// The position of `key`, if present.
    pub(super) fn find(&self, key: &Key) -> Option<usize> {
        let hot = &self.hot;
        self.index
            .find(self.hasher.hash_one(key), |&i| hot[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    #[cfg(test)]
    pub(super) fn view(&self, i: usize) -> View<'_> {
        View {
            hot: &self.hot[i],
            cold: &self.cold[i],
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = View<'_>> {
        self.hot
            .iter()
            .zip(&self.cold)
            .map(|(hot, cold)| View { hot, cold })
    }

    /// A heartbeat for entry `i` at `now`. Returns whether the weight or
    /// labels changed, and the time of an expiry item to queue, if any.
    ///
    /// With the same or a longer TTL the new deadline is past the queued
    /// item, which is re-queued when it comes due, so only a shorter TTL
    /// (or a first one) reads the queue bookkeeping.
    pub(super) fn renew(
        &mut self,
        i: usize,
        ttl: Duration,
        weight: u32,
        meta: &BTreeMap<String, String>,
        now: Tick,
    ) -> (bool, Option<Tick>) {
        let hot = &mut self.hot[i];
        let old_ttl = hot.ttl_ns();
        let ns = ttl_nanos(ttl);
        hot.stamp = now + ns;
        hot.ttl_weight = ns << TTL_SHIFT | (hot.ttl_weight & (WEIGHT_MASK | HAS_META));
        let has_meta = hot.ttl_weight & HAS_META != 0;
        let changed = (hot.ttl_weight & WEIGHT_MASK) != u64::from(weight)
            || ((has_meta || !meta.is_empty())
                && self.cold[i].meta.as_deref().unwrap_or(&NO_META) != meta);
        if changed {
            self.set_labels(i, weight, meta);
        }
        let mut queue = None;
        if ns != 0 && (old_ttl == 0 || ns < old_ttl) {
            let cold = &mut self.cold[i];
            let deadline = now + ns;
            if cold.queued == 0 || deadline < cold.queued {
                cold.queued = deadline;
                queue = Some(deadline);
            }
        }
        (changed, queue)
    }

    fn set_labels(&mut self, i: usize, weight: u32, meta: &BTreeMap<String, String>) {
        debug_assert!(u64::from(weight) <= WEIGHT_MASK, "weights are validated");
        let flag = if meta.is_empty() { 0 } else { HAS_META };
        let hot = &mut self.hot[i];
        hot.ttl_weight =
            (hot.ttl_weight & !(WEIGHT_MASK | HAS_META)) | flag | (u64::from(weight) & WEIGHT_MASK);
        self.cold[i].meta = (!meta.is_empty()).then(|| Box::new(meta.clone()));
    }

    /// Adds an absent `key` beating at `now`; returns its deadline, the time
    /// of the expiry item to queue for it.
    pub(super) fn insert(
        &mut self,
        key: Key,
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
        key: Key,
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
        key: Key,
        ttl_ns: u64,
        stamp: Tick,
        weight: u32,
        meta: &BTreeMap<String, String>,
    ) -> Option<Tick> {
        let i = self.hot.len();
        let pos = u32::try_from(i).expect("max_entries is validated to fit in u32");
        let hash = self.hasher.hash_one(&key);
        self.hot.push(Hot {
            key,
            stamp,
            ttl_weight: ttl_ns << TTL_SHIFT,
        });
        self.cold.push(Cold {
            queued: 0,
            meta: None,
        });
        self.set_labels(i, weight, meta);
        let (hot, hasher) = (&self.hot, &self.hasher);
        self.index
            .insert_unique(hash, pos, |&j| hasher.hash_one(&hot[j as usize].key));
        let deadline = self.hot[i].deadline();
        self.cold[i].queued = deadline.unwrap_or(0);
        deadline
    }

    /// Removes `key`; `false` when it was not there. The last entry moves
    /// into the hole, so `hot` stays dense.
    pub(super) fn remove(&mut self, key: &Key) -> bool {
        let hot = &self.hot;
        let Ok(found) = self
            .index
            .find_entry(self.hasher.hash_one(key), |&i| hot[i as usize].key == *key)
        else {
            return false;
        };
        let i = found.remove().0 as usize;
        let last = self.hot.len() - 1;
        if i != last {
            let hash = self.hasher.hash_one(&self.hot[last].key);
            let moved = self
                .index
                .find_mut(hash, |&j| j as usize == last)
                .expect("every entry is indexed");
            *moved = i as u32;
        }
        self.hot.swap_remove(i);
        self.cold.swap_remove(i);
        true
    }

    /// Settles the expiry item of `key` due at `at`; `now` has reached it.
    pub(super) fn due(&mut self, key: &Key, at: Tick, now: Tick) -> Due {
        let Some(i) = self.find(key) else {
            return Due::Stale;
        };
        let cold = &mut self.cold[i];
        if cold.queued != at {
            return Due::Stale;
        }
        match self.hot[i].deadline() {
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
            assert_eq!(matches!(key, Key::Tcp4 { .. }), packed, "{addr}");
            assert_eq!(key, Key::new(addr));
        }
        assert_ne!(Key::new("tcp@10.0.1.2:7001"), Key::new("tcp@10.0.1.2:7002"));
    }

    #[test]
    fn removal_keeps_every_other_entry_findable() {
        let mut e = Entries::new(RandomState::default());
        let addrs: Vec<String> = (0..200)
            .map(|i| format!("tcp@10.0.0.{}:{i}", i % 7))
            .collect();
        for a in &addrs {
            e.insert(Key::new(a), Duration::from_secs(5), 1, &NO_META, 1);
        }
        for a in addrs.iter().step_by(3) {
            assert!(e.remove(&Key::new(a)));
            assert!(!e.remove(&Key::new(a)), "{a} removed twice");
        }
        for (n, a) in addrs.iter().enumerate() {
            let i = e.find(&Key::new(a));
            assert_eq!(i.is_some(), n % 3 != 0, "{a}");
            if let Some(i) = i {
                assert_eq!(e.view(i).key().to_string(), *a);
            }
        }
        assert_eq!(e.len(), 200 - 67);
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
            (e.view(i).deadline(), e.view(i).last_beat()),
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
