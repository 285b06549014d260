//! The index of a service's filtered listings (`?meta.KEY=VALUE`): for
//! each label pair (`zone=eu`), the latest index at which an entry
//! carrying it registered, changed (weight, labels, status) or left
//! (deregistered, expired, or relabelled: its old labels left).
//!
//! Every change to the listing of a filter is a change to an entry that
//! carried every pair of the filter, before or after: so each of those
//! pairs has an index at least as late, and the least of them is an index
//! at or after the listing's last change ([`Pairs::bound`]). It is exact
//! while one pair of the filter belongs only to the entries it shows (a
//! zone), early at worst, and a change in another zone leaves it where it
//! is. No entry keeps anything for it, and a renewal touches none of it.
//!
//! The pairs are bounded by twice the service's entries (at least 64):
//! beyond it the pairs of the key with the most pairs go (labels unique
//! to each server, such as an id, before a zone), leaving one bound for
//! that key; beyond 64 keys, one bound for all. A bound only ever passes
//! what it replaces, so every index is early or exact, never late, and
//! none goes down.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use super::RandomState;

/// Fewest label pairs a service may keep, however few its entries.
const MIN_PAIRS: usize = 64;
/// Most keys with a bound of their own.
const MAX_KEYS: usize = 64;

pub(super) struct Pairs {
    hasher: RandomState,
    /// By the hash of a pair: the hash of its key, and the latest index at
    /// which an entry carrying the pair registered, changed or left.
    pairs: HashMap<u64, (u64, u64), RandomState>,
    /// By the hash of a key: a bound for its pairs shed from `pairs`.
    keys: HashMap<u64, u64, RandomState>,
    /// A bound for every pair: what happened at or below it may be
    /// forgotten (shed past `MAX_KEYS`, or from before the service was
    /// created).
    floor: u64,
}

impl Pairs {
    /// Nothing remembered, and nothing known at or below `floor`.
    pub(super) fn new(hasher: RandomState, floor: u64) -> Pairs {
        Pairs {
            pairs: HashMap::with_hasher(hasher.clone()),
            keys: HashMap::with_hasher(hasher.clone()),
            hasher,
            floor,
        }
    }

    /// Entries with `labels` registered, changed or left at `index` (the
    /// latest index yet); the service keeps `entries`.
    pub(super) fn note<'a>(
        &mut self,
        labels: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
        index: u64,
        entries: usize,
    ) {
        for meta in labels {
            for (k, v) in meta {
                let key = self.hasher.hash_one(k.as_str());
                let pair = self.hasher.hash_one((k.as_str(), v.as_str()));
                if let Some((other, at)) = self.pairs.insert(pair, (key, index))
                    && other != key
                {
                    // Two pairs of different keys share a hash (as rare as
                    // any 64-bit collision): the other's bound must not
                    // move to this key.
                    self.floor = self.floor.max(at);
                }
            }
        }
        let room = MIN_PAIRS.max(entries.saturating_mul(2));
        if self.pairs.len() > room {
            self.shed(room / 2);
        }
    }

    /// Sheds the pairs of the keys with the most pairs until at most `keep`
    /// remain; each key shed keeps one bound.
    fn shed(&mut self, keep: usize) {
        let mut per_key: HashMap<u64, usize> = HashMap::new();
        for (key, _) in self.pairs.values() {
            *per_key.entry(*key).or_default() += 1;
        }
        let mut keys: Vec<(usize, u64)> = per_key.into_iter().map(|(k, n)| (n, k)).collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let mut left = self.pairs.len();
        let mut shed = Vec::new();
        for (n, key) in keys {
            if left <= keep {
                break;
            }
            shed.push(key);
            left -= n;
        }
        for key in shed {
            let mut bound = self.keys.get(&key).copied().unwrap_or(0);
            self.pairs.retain(|_, (k, at)| {
                let keep = *k != key;
                if !keep {
                    bound = bound.max(*at);
                }
                keep
            });
            self.keys.insert(key, bound);
        }
        if self.keys.len() > MAX_KEYS {
            let all = self.keys.values().copied().max().unwrap_or(0);
            self.floor = self.floor.max(all);
            self.keys.clear();
        }
    }

    /// Forgets everything at or below `floor`: a restore, whose counter
    /// passes changes this service never saw.
    pub(super) fn raise(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
        self.pairs.clear();
        self.keys.clear();
    }

    /// An index at or after the last change of the listing of the entries
    /// whose labels hold every pair of `filter` (not empty), or the floor:
    /// it only ever grows.
    pub(super) fn bound(&self, filter: &[(String, String)]) -> u64 {
        filter
            .iter()
            .map(|(k, v)| {
                let key = self.hasher.hash_one(k.as_str());
                let pair = self.hasher.hash_one((k.as_str(), v.as_str()));
                let exact = self.pairs.get(&pair).map_or(0, |&(_, at)| at);
                let shed = self.keys.get(&key).copied().unwrap_or(0);
                exact.max(shed).max(self.floor)
            })
            .min()
            .unwrap_or(self.floor)
    }

    /// Label pairs and keys held, for tests that check they stay bounded.
    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize) {
        (self.pairs.len(), self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn filter(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        labels(pairs).into_iter().collect()
    }

    #[test]
    fn a_bound_is_the_latest_change_that_could_match() {
        let mut d = Pairs::new(RandomState::default(), 3);
        let eu = filter(&[("zone", "eu")]);
        let eu_v2 = filter(&[("v", "2"), ("zone", "eu")]);
        assert_eq!(d.bound(&eu), 3, "nothing left: the floor");
        d.note(&[labels(&[("zone", "eu"), ("v", "1")])], 10, 5);
        d.note(&[labels(&[("zone", "us"), ("v", "2")])], 11, 5);
        assert_eq!(d.bound(&eu), 10);
        assert_eq!(d.bound(&filter(&[("zone", "us")])), 11);
        // No eu server with v=2 changed; the bound may say 10 (early), not 11.
        assert_eq!(d.bound(&eu_v2), 10);
        assert_eq!(d.bound(&filter(&[("zone", "ap")])), 3);
        d.note(&[labels(&[("zone", "us")])], 12, 5);
        assert_eq!(d.bound(&eu), 10, "another zone's change");
        d.raise(20);
        assert_eq!(d.bound(&eu), 20);
    }

    #[test]
    fn pairs_stay_bounded_and_bounds_never_go_down() {
        let mut d = Pairs::new(RandomState::default(), 0);
        let eu = filter(&[("zone", "eu")]);
        d.note(&[labels(&[("zone", "eu"), ("id", "e")])], 1, 10);
        let mut last = d.bound(&eu);
        // Servers with an id each come and go in another zone: their ids
        // are shed, the zone stays exact.
        for i in 0..10_000u64 {
            let id = format!("x{i}");
            d.note(&[labels(&[("zone", "us"), ("id", &id)])], 2 + i, 10);
            let (pairs, keys) = d.held();
            assert!(pairs <= MIN_PAIRS + 1 && keys <= MAX_KEYS, "{pairs} {keys}");
            let now = d.bound(&eu);
            assert!(now >= last);
            last = now;
        }
        assert_eq!(d.bound(&eu), 1, "still exact");
        assert!(d.bound(&filter(&[("id", "x5")])) >= 7, "shed, but covered");
        // Many keys: one bound for all, still covering every departure.
        for i in 0..1_000u64 {
            let key = format!("k{i}");
            d.note(&[labels(&[(key.as_str(), "v")])], 20_000 + i, 10);
            let (pairs, keys) = d.held();
            assert!(
                pairs <= MIN_PAIRS + 1 && keys <= MAX_KEYS + 1,
                "{pairs} {keys}"
            );
            for j in [0, i / 2, i] {
                let k = format!("k{j}");
                assert!(d.bound(&filter(&[(k.as_str(), "v")])) >= 20_000 + j);
            }
            let now = d.bound(&eu);
            assert!(now >= last);
            last = now;
        }
    }
}
