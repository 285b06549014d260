//! A service's change log: the addresses its last changes touched, so a
//! delta long-poll (`?index=N&delta=1`) can be answered with the entries
//! added, changed and removed since N instead of the whole listing.
//!
//! Bounded: at most [`LOG_LIMIT`] records, and never more than the
//! service's size (or [`LOG_FLOOR`] for a smaller one), so a service's log
//! costs at most about a quarter of what its entries cost (56 bytes a
//! record against about 200 an entry; a small one may keep 8), and at
//! most 14 KiB. Each record is
//! a copy of the address as the table packs it (an IPv4 `tcp@` address or
//! a short one in 12 bytes, a long one with its text), its kind and its
//! index. Why bounded by the service's size: beyond that many changes, the
//! full listing is about as small as the delta. A renewal that changes nothing writes no record: only
//! registrations, changes of weight, metadata or status, deregistrations
//! and expiries do, O(1) each.

use std::collections::{HashMap, VecDeque};

use super::entries::{Entries, Key};

/// Most records a service's log keeps (docs/PERFORMANCE.md, "Delta
/// watches"): at 5 changes a second, 50 s of history, well over a
/// long-poll's round trip.
pub(crate) const LOG_LIMIT: usize = 256;
/// Records a small service keeps even when it has fewer entries.
pub(crate) const LOG_FLOOR: usize = 8;

/// What a change did to an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// It was absent and registered.
    Added,
    /// It was present and its weight, metadata or status changed.
    Changed,
    /// It was present and left (deregistered or expired).
    Removed,
}

/// The last changes of a service, oldest first.
pub(super) struct ChangeLog {
    records: VecDeque<(u64, Kind, Key<'static>)>,
    /// Every change at an index past this one is in `records`: the index
    /// of the newest record dropped, or where the log started.
    floor: u64,
}

/// The changes of a service since an index, as the table holds them now.
pub(crate) struct Changes {
    /// Addresses absent at that index and present now.
    pub(crate) added: Vec<String>,
    /// Addresses present then and now, whose entry changed in between (it
    /// may have left and come back).
    pub(crate) changed: Vec<String>,
    /// Addresses present then and absent now.
    pub(crate) removed: Vec<String>,
}

impl ChangeLog {
    /// An empty log that knows every change after `floor` (none yet).
    pub(super) fn new(floor: u64) -> ChangeLog {
        ChangeLog {
            records: VecDeque::new(),
            floor,
        }
    }

    /// Notes a change of `kind` to `key` at `index`, in a service of
    /// `entries` entries (after the change). Indexes only grow.
    pub(super) fn push(&mut self, index: u64, kind: Kind, key: Key<'static>, entries: usize) {
        let room = entries.clamp(LOG_FLOOR, LOG_LIMIT);
        while self.records.len() >= room {
            self.drop_oldest();
        }
        self.records.push_back((index, kind, key));
    }

    /// Notes that `n` changes happened at `index` that the log does not
    /// hold one by one (a mass expiry larger than the log): every earlier
    /// record is forgotten.
    pub(super) fn overflow(&mut self, index: u64) {
        self.records.clear();
        self.floor = self.floor.max(index);
    }

    /// Forgets everything before `index` (a restore raised the counter:
    /// changes a restart lost are unknown).
    pub(super) fn raise(&mut self, index: u64) {
        while self.records.front().is_some_and(|r| r.0 <= index) {
            self.records.pop_front();
        }
        self.floor = self.floor.max(index);
    }

    fn drop_oldest(&mut self) {
        if let Some((index, ..)) = self.records.pop_front() {
            self.floor = self.floor.max(index);
        }
    }

    /// Every index past which this log knows each change.
    #[cfg(test)]
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// How many records it holds.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// The addresses changed since `since` as `entries` holds them now, or
    /// `None` when the log no longer holds every change since then. O(the
    /// records past `since`).
    pub(super) fn since(&self, since: u64, entries: &Entries) -> Option<Changes> {
        if since < self.floor {
            return None;
        }
        // Newest first: the last kind kept for an address is that of its
        // earliest change past `since`, which says whether it was present
        // at `since` (only an absent address can be added).
        let mut first: HashMap<String, Kind> = HashMap::new();
        for (_, kind, key) in self.records.iter().rev().take_while(|r| r.0 > since) {
            first.insert(key.to_string(), *kind);
        }
        let mut changes = Changes {
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
        };
        for (addr, kind) in first {
            let was = kind != Kind::Added;
            let is = entries.find(&Key::new(&addr)).is_some();
            match (was, is) {
                (false, true) => changes.added.push(addr),
                (true, true) => changes.changed.push(addr),
                (true, false) => changes.removed.push(addr),
                (false, false) => {}
            }
        }
        changes.added.sort_unstable();
        changes.changed.sort_unstable();
        changes.removed.sort_unstable();
        Some(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::registry::tests::{S, registry};
    use crate::registry::{PutOptions, Registry};

    /// The changes of "svc" since `n`, as lists of addresses.
    fn since(reg: &Registry, n: u64) -> Option<[Vec<String>; 3]> {
        let addrs = |v: Vec<crate::registry::EntryInfo>| v.into_iter().map(|e| e.addr).collect();
        reg.delta("svc", n)
            .map(|d| [addrs(d.added), addrs(d.changed), d.removed])
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_since_an_index_say_added_changed_and_removed() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put("svc", "a").unwrap();
        reg.put("svc", "b").unwrap();
        let n = reg.index("svc");
        reg.put("svc", "a").unwrap(); // a renewal is no change
        assert_eq!(since(&reg, n), Some([vec![], vec![], vec![]]));
        reg.put("svc", "c").unwrap();
        reg.put_with("svc", "a", &PutOptions::new().weight(3))
            .unwrap();
        reg.remove("svc", "b").unwrap();
        reg.put("svc", "d").unwrap();
        reg.remove("svc", "d").unwrap(); // came and went: nothing
        reg.remove("svc", "c").unwrap();
        reg.put("svc", "c").unwrap(); // went and came back: added
        assert_eq!(
            since(&reg, n),
            Some([names(&["c"]), names(&["a"]), names(&["b"])])
        );
        let m = reg.index("svc");
        reg.remove("svc", "a").unwrap();
        reg.put("svc", "a").unwrap(); // left and came back: changed
        assert_eq!(since(&reg, m), Some([vec![], names(&["a"]), vec![]]));
        // Expiries are removals.
        let m = reg.index("svc");
        reg.put_with("svc", "e", &PutOptions::new().ttl(60 * S))
            .unwrap();
        clock.advance(5 * S);
        assert_eq!(reg.sweep(), 2);
        assert_eq!(
            since(&reg, m),
            Some([names(&["e"]), vec![], names(&["a", "c"])])
        );
    }

    #[test]
    fn a_record_takes_56_bytes() {
        // docs/PERFORMANCE.md states the memory bound from it.
        assert_eq!(std::mem::size_of::<(u64, Kind, Key<'static>)>(), 56);
    }

    #[test]
    fn the_log_is_bounded_and_answers_none_past_what_it_holds() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put("svc", "base").unwrap();
        let n0 = reg.index("svc");
        assert_eq!(since(&reg, n0 - 1), None, "from before it was created");
        for i in 1..LOG_FLOOR {
            reg.put("svc", &format!("s{i}")).unwrap();
        }
        assert!(since(&reg, n0).is_some(), "all of it is held");
        // A small service keeps LOG_FLOOR records: more drop the oldest,
        // and with them the changes from before.
        reg.put_with("svc", "s1", &PutOptions::new().weight(2))
            .unwrap();
        assert!(since(&reg, n0).is_some(), "the record at n0 is not needed");
        reg.put_with("svc", "s2", &PutOptions::new().weight(2))
            .unwrap();
        assert_eq!(since(&reg, n0), None);
        assert_eq!(
            since(&reg, n0 + 1),
            Some([
                names(&["s2", "s3", "s4", "s5", "s6", "s7"]),
                names(&["s1"]),
                vec![]
            ])
        );
        // A big service keeps at most LOG_LIMIT records.
        for i in 0..2 * LOG_LIMIT {
            reg.put("big", &format!("b{i}")).unwrap();
        }
        let t = reg.inner.table.lock();
        let log = &t.services.get("big").unwrap().log;
        assert_eq!(log.len(), LOG_LIMIT);
        assert_eq!(log.floor(), t.counter - LOG_LIMIT as u64);
    }

    #[test]
    fn a_mass_expiry_larger_than_the_log_forgets_the_history_before_it() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put_with("svc", "keep", &PutOptions::new().ttl(60 * S))
            .unwrap();
        for i in 0..LOG_LIMIT + 10 {
            reg.put("svc", &format!("m{i}")).unwrap();
        }
        let n = reg.index("svc");
        clock.advance(5 * S);
        assert_eq!(reg.sweep(), LOG_LIMIT + 10);
        assert_eq!(since(&reg, n), None, "more removals than the log holds");
        let m = reg.index("svc");
        assert_eq!(since(&reg, m), Some([vec![], vec![], vec![]]));
        reg.put("svc", "new").unwrap();
        assert_eq!(since(&reg, m), Some([names(&["new"]), vec![], vec![]]));
    }

    #[test]
    fn a_restart_or_a_service_that_came_back_answers_none() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put("svc", "a").unwrap();
        let n = reg.index("svc");
        reg.put("svc", "b").unwrap();
        // An index beyond the counter: a client of a registry before a
        // restart.
        assert_eq!(since(&reg, reg.counter() + 1), None);
        // An index past the service's own: another registry's.
        reg.put("other", "x").unwrap();
        assert_eq!(since(&reg, reg.counter()), None);
        // Restored from a snapshot: nothing from before is known.
        let restored = registry(&clock);
        restored.restore(&reg.snapshot()).unwrap();
        assert_eq!(since(&restored, n), None);
        let r = restored.index("svc");
        assert_eq!(since(&restored, r), Some([vec![], vec![], vec![]]));
        // A service that emptied out and came back knows nothing of before.
        reg.remove("svc", "a").unwrap();
        reg.remove("svc", "b").unwrap();
        reg.put("svc", "c").unwrap();
        assert_eq!(since(&reg, n), None);
        // An absent service has no log.
        assert!(reg.delta("none", 0).is_none());
    }
}
