//! Client-side discovery: the `Discovery` trait, `SelectMode`, the
//! [`Instance`] type, outlier ejection, and one file per implementation.

mod instance;
mod multi;
mod outlier;
mod registry;

use std::sync::Arc;
use std::time::Instant;

pub use instance::Instance;
pub use multi::MultiServersDiscovery;
#[cfg(feature = "etcd")]
pub(crate) use registry::Fetched;
pub(crate) use registry::list_json_with;
pub use registry::{RegistryDiscovery, RegistryDiscoveryBuilder};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::rand;
use outlier::Outliers;

/// How [`Discovery::get`] picks one of the known servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SelectMode {
    /// Uniformly at random.
    Random,
    /// In turn, starting at a random position (as the seed does), and
    /// continuing where it was across list updates.
    RoundRobin,
    /// In turn by weight, smoothly: over any run of total-weight picks each
    /// server is picked exactly its weight times, never in bursts (nginx's
    /// smooth weighted round robin).
    WeightedRoundRobin,
    /// The server that owns the caller's key (rendezvous hashing; see
    /// [`hash_key`]): a key keeps its server while that server stays, and
    /// when one of n servers leaves only its keys, about 1/n, move.
    ConsistentHash(u64),
}

/// A source of server addresses that picks one per call.
///
/// Implementations are shared between threads (`&self` everywhere). Picks
/// ([`get`](Discovery::get), [`get_all`](Discovery::get_all),
/// [`get_instance`](Discovery::get_instance)) only return instances that
/// take work: never a draining one, nor one ejected after reported
/// failures; [`instances`](Discovery::instances) lists those too.
pub trait Discovery: Send + Sync {
    /// Fetches the list from its source now, whatever its age.
    ///
    /// # Errors
    ///
    /// The source's error; the current list is kept.
    fn refresh(&self) -> Result<()>;

    /// Replaces the list by hand: each address with weight 1, no metadata,
    /// up.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddr`] when an address is invalid; nothing changes.
    fn update(&self, servers: Vec<String>) -> Result<()>;

    /// Picks one server.
    ///
    /// # Errors
    ///
    /// [`Error::NoServers`] when no instance takes work, or the source's
    /// error when no list could ever be fetched.
    fn get(&self, mode: SelectMode) -> Result<String>;

    /// Every server picks may choose from (not the draining or ejected
    /// ones), in the source's order.
    ///
    /// # Errors
    ///
    /// The source's error when no list could ever be fetched.
    fn get_all(&self) -> Result<Vec<String>>;

    /// Every known instance with its attributes, draining and ejected ones
    /// included, in the source's order.
    ///
    /// The default lists [`get_all`](Discovery::get_all) with the default
    /// attributes; every discovery of this crate overrides it.
    ///
    /// ```
    /// use regcenter::{Discovery, MultiServersDiscovery};
    ///
    /// let d = MultiServersDiscovery::new(vec!["tcp@a:1".into(), "tcp@b:1".into()])?;
    /// let addrs: Vec<String> = d.instances()?.iter().map(|i| i.addr().to_string()).collect();
    /// assert_eq!(addrs, ["tcp@a:1", "tcp@b:1"]);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The source's error when no list could ever be fetched.
    fn instances(&self) -> Result<Vec<Instance>> {
        Ok(self.get_all()?.into_iter().map(Instance::new).collect())
    }

    /// Picks one instance, as [`get`](Discovery::get) picks its address.
    ///
    /// The default picks with [`get`](Discovery::get) and gives the
    /// default attributes; every discovery of this crate overrides it.
    ///
    /// ```
    /// use regcenter::{Discovery, MultiServersDiscovery, SelectMode};
    ///
    /// let d = MultiServersDiscovery::new(vec!["tcp@127.0.0.1:7001".into()])?;
    /// let i = d.get_instance(SelectMode::RoundRobin)?;
    /// assert_eq!(i.socket_addr(), Some("127.0.0.1:7001"));
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get`](Discovery::get).
    fn get_instance(&self, mode: SelectMode) -> Result<Instance> {
        self.get(mode).map(Instance::new)
    }
}

/// A list with the state of each selection mode, of preference and of
/// ejection: the state every discovery shares.
///
/// Picks choose among `eligible`, computed when the list, an ejection or
/// the time an ejection ends changes, never per pick: a pick costs the
/// same with a preference or ejected instances as without.
#[derive(Debug)]
struct Picker {
    list: Vec<Instance>,
    /// Consistent hashing: each address's stable hash, computed once.
    hashes: Vec<u64>,
    /// Round robin: the next position.
    index: usize,
    /// Conditions on metadata that preferred instances meet.
    prefer: Vec<(String, String)>,
    outliers: Outliers,
    /// Per instance: up and not ejected.
    pickable: Vec<bool>,
    /// The positions picks choose among: the pickable preferred instances,
    /// or every pickable one when no preferred one is.
    eligible: Vec<usize>,
    /// Beside `eligible`, position for position, what the hash and
    /// weighted modes read on every pick, laid out contiguously as they
    /// were before there was a choice to make: each hash, each weight, and
    /// each current weight of smooth weighted round robin.
    eligible_hashes: Vec<u64>,
    eligible_weights: Vec<i64>,
    current: Vec<i64>,
    /// When an ejection ends and `eligible` must be computed again.
    recheck_at: Option<Instant>,
}

impl Picker {
    fn new(servers: Vec<String>) -> Picker {
        Picker::with(
            Vec::new(),
            outlier::DEFAULT_EJECT_AFTER,
            Arc::new(SystemClock),
            servers.into_iter().map(Instance::new).collect(),
        )
    }

    fn with(
        prefer: Vec<(String, String)>,
        eject_after: u32,
        clock: Arc<dyn Clock>,
        list: Vec<Instance>,
    ) -> Picker {
        // The seed starts round robin at a random index so that many clients
        // started together do not all hit the first server.
        let mut p = Picker {
            list: Vec::new(),
            hashes: Vec::new(),
            index: rand::below(usize::MAX >> 1),
            prefer,
            outliers: Outliers::new(eject_after, clock),
            pickable: Vec::new(),
            eligible: Vec::new(),
            eligible_hashes: Vec::new(),
            eligible_weights: Vec::new(),
            current: Vec::new(),
            recheck_at: None,
        };
        p.set(list);
        p
    }

    /// Replaces the list; round robin continues from where it was. An
    /// instance that left the list or registered again (other weight,
    /// metadata or status) starts with a clean failure record.
    fn set(&mut self, list: Vec<Instance>) {
        let same = list.len() == self.list.len()
            && list
                .iter()
                .zip(&self.list)
                .all(|(a, b)| a.same_registration(b));
        if !same {
            let old: std::collections::HashMap<&str, &Instance> =
                self.list.iter().map(|i| (i.addr(), i)).collect();
            let new: std::collections::HashMap<&str, &Instance> =
                list.iter().map(|i| (i.addr(), i)).collect();
            self.outliers.retain(|a| {
                matches!((old.get(a), new.get(a)), (Some(o), Some(n)) if o.same_registration(n))
            });
            self.hashes = list.iter().map(|i| hash_key(i.addr())).collect();
            // Smooth weighted round robin starts again on a new list.
            self.eligible.clear();
        }
        self.list = list;
        self.recompute();
    }

    /// Computes who picks choose among, now.
    fn recompute(&mut self) {
        let now = self.outliers.now();
        self.pickable = self
            .list
            .iter()
            .map(|i| i.is_up() && !self.outliers.is_ejected(i.addr(), now))
            .collect();
        // Ejection takes at most half of the list when it happens; the list
        // may shrink, or be half draining, after. With every instance that
        // takes work out, ejection is set aside rather than picking none.
        if !self.pickable.contains(&true) {
            self.pickable = self.list.iter().map(Instance::is_up).collect();
        }
        let before = std::mem::take(&mut self.eligible);
        let preferred = (0..self.list.len())
            .filter(|&i| self.pickable[i] && self.list[i].matches(&self.prefer));
        self.eligible = preferred.collect();
        if self.eligible.is_empty() {
            self.eligible = (0..self.list.len()).filter(|&i| self.pickable[i]).collect();
        }
        if before != self.eligible || self.current.len() != self.eligible.len() {
            // Smooth weighted round robin is exact over a fixed set only.
            self.current = vec![0; self.eligible.len()];
        }
        self.eligible_hashes = self.eligible.iter().map(|&i| self.hashes[i]).collect();
        self.eligible_weights = self
            .eligible
            .iter()
            .map(|&i| i64::from(self.list[i].weight))
            .collect();
        self.recheck_at = self.outliers.next_return(now);
    }

    /// Recomputes when an ejection has ended since the last computation.
    fn catch_up(&mut self) {
        if let Some(t) = self.recheck_at
            && self.outliers.now() >= t
        {
            self.recompute();
        }
    }

    fn pick(&mut self, mode: SelectMode, source: &str) -> Result<String> {
        self.try_pick(mode).ok_or_else(|| Error::NoServers {
            source: source.to_string(),
        })
    }

    /// A pick, or `None` when no instance takes work.
    fn try_pick(&mut self, mode: SelectMode) -> Option<String> {
        let i = self.pick_position(mode)?;
        Some(self.list[i].addr.clone())
    }

    /// A picked instance, or `None` when no instance takes work.
    fn try_pick_instance(&mut self, mode: SelectMode) -> Option<Instance> {
        let i = self.pick_position(mode)?;
        Some(self.list[i].clone())
    }

    fn pick_position(&mut self, mode: SelectMode) -> Option<usize> {
        self.catch_up();
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        let i = match mode {
            SelectMode::Random => self.eligible[rand::below(n)],
            SelectMode::RoundRobin => {
                let i = self.index % n;
                self.index = (i + 1) % n;
                self.eligible[i]
            }
            SelectMode::WeightedRoundRobin => {
                let j = self.smooth_weighted();
                self.eligible[j]
            }
            SelectMode::ConsistentHash(key) => {
                let key = splitmix(key);
                let j = (0..n)
                    .max_by_key(|&j| splitmix(self.eligible_hashes[j] ^ key))
                    .expect("the list is not empty");
                self.eligible[j]
            }
        };
        Some(i)
    }

    /// Nginx's smooth weighted round robin over the eligible instances:
    /// each gains its weight, the richest is picked and pays the total.
    /// Over any `total` picks each is picked exactly `weight` times,
    /// interleaved. Returns a position in `eligible`.
    fn smooth_weighted(&mut self) -> usize {
        let total: i64 = self.eligible_weights.iter().sum();
        let mut best = 0;
        for j in 0..self.current.len() {
            self.current[j] += self.eligible_weights[j];
            if self.current[j] > self.current[best] {
                best = j;
            }
        }
        self.current[best] -= total;
        best
    }

    /// The addresses picks may choose from, preference aside.
    fn pickable_addrs(&mut self) -> Vec<String> {
        self.catch_up();
        self.list
            .iter()
            .zip(&self.pickable)
            .filter(|(_, p)| **p)
            .map(|(i, _)| i.addr.clone())
            .collect()
    }

    /// Every instance, with whether it is out now.
    fn instances(&mut self) -> Vec<Instance> {
        self.catch_up();
        let now = self.outliers.now();
        self.list
            .iter()
            .map(|i| {
                let mut i = i.clone();
                i.ejected = self.outliers.is_ejected(i.addr(), now);
                i
            })
            .collect()
    }

    /// A failure of `addr`, if it is listed.
    fn report_failure(&mut self, addr: &str) {
        if self.list.iter().any(|i| i.addr == addr) && self.outliers.failure(addr, self.list.len())
        {
            log::info!("discovery: {addr} failed repeatedly; skipping it for a while");
            self.recompute();
        }
    }

    /// A success of `addr`.
    fn report_success(&mut self, addr: &str) {
        if self.outliers.success(addr) {
            self.recompute();
        }
    }
}

/// Mixes a 64-bit value (splitmix64's finaliser). Rendezvous scores are
/// `splitmix(hash_key(addr) ^ splitmix(key))`: stable across processes and
/// versions, so every client maps a key alike.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a caller's key (FNV-1a) for
/// [`SelectMode::ConsistentHash`]: the same on every machine and version.
///
/// ```
/// use regcenter::{Discovery, MultiServersDiscovery, SelectMode, hash_key};
///
/// let d = MultiServersDiscovery::new(vec!["tcp@a:1".into(), "tcp@b:1".into()])?;
/// let user = SelectMode::ConsistentHash(hash_key("user-42"));
/// assert_eq!(d.get(user)?, d.get(user)?);
/// # Ok::<(), regcenter::Error>(())
/// ```
pub fn hash_key(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn validate_all(servers: &[String]) -> Result<()> {
    servers
        .iter()
        .try_for_each(|s| crate::protocol::validate_addr(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(addrs: &[String], weights: &[u32]) -> Vec<Instance> {
        addrs
            .iter()
            .zip(weights)
            .map(|(a, &w)| {
                let mut i = Instance::new(a.clone());
                i.weight = w;
                i
            })
            .collect()
    }

    fn picker(weights: &[u32]) -> Picker {
        let mut p = Picker::new(Vec::new());
        let servers: Vec<String> = (0..weights.len()).map(|i| format!("s{i}")).collect();
        p.set(weighted(&servers, weights));
        p
    }

    #[test]
    fn weighted_round_robin_is_exact_over_every_window_and_smooth() {
        let weights = [5, 1, 1, 3];
        let total: u32 = weights.iter().sum();
        let mut p = picker(&weights);
        let picks: Vec<String> = (0..total * 20)
            .map(|_| p.pick(SelectMode::WeightedRoundRobin, "t").unwrap())
            .collect();
        // Any window of `total` consecutive picks holds each server exactly
        // `weight` times.
        for window in picks.windows(total as usize) {
            for (i, &w) in weights.iter().enumerate() {
                let name = format!("s{i}");
                assert_eq!(window.iter().filter(|p| **p == name).count(), w as usize);
            }
        }
        // Never in bursts: the heaviest (5 of 10) never comes three times running.
        assert!(
            !picks.windows(3).any(|w| w.iter().all(|p| p == "s0")),
            "{picks:?}"
        );
    }

    #[test]
    fn rendezvous_moves_only_the_keys_of_the_server_that_left() {
        let n = 10;
        let all: Vec<String> = (0..n).map(|i| format!("tcp@10.0.0.{i}:7001")).collect();
        let mut before = picker(&vec![1; n]);
        before.set(weighted(&all, &vec![1; n]));
        let mut after = picker(&vec![1; n - 1]);
        let gone = &all[3];
        let rest: Vec<String> = all.iter().filter(|a| *a != gone).cloned().collect();
        after.set(weighted(&rest, &vec![1; n - 1]));
        let (mut moved, mut owned) = (0, 0);
        for k in 0..10_000u64 {
            let mode = SelectMode::ConsistentHash(hash_key(&format!("key-{k}")));
            let a = before.pick(mode, "t").unwrap();
            let b = after.pick(mode, "t").unwrap();
            if &a == gone {
                owned += 1;
            } else {
                assert_eq!(a, b, "a key of a server that stayed moved");
            }
            if a != b {
                moved += 1;
            }
        }
        assert_eq!(moved, owned, "only the departed server's keys move");
        // About 1/n of the keys, within a tolerance.
        assert!((700..1300).contains(&moved), "{moved} of 10000 moved");
    }

    #[test]
    fn hash_key_is_stable() {
        assert_eq!(hash_key(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_key("a"), 0xaf63_dc4c_8601_ec8c);
    }

    use crate::clock::ManualClock;
    use crate::protocol::Status;
    use std::collections::HashSet;
    use std::time::Duration;

    const MODES: [SelectMode; 4] = [
        SelectMode::Random,
        SelectMode::RoundRobin,
        SelectMode::WeightedRoundRobin,
        SelectMode::ConsistentHash(7),
    ];

    fn zoned(list: &[(&str, &str)]) -> Vec<Instance> {
        list.iter()
            .map(|(a, zone)| {
                let mut i = Instance::new(a.to_string());
                i.meta.insert("zone".into(), zone.to_string());
                i
            })
            .collect()
    }

    fn zone_picker(prefer: &[(&str, &str)], list: Vec<Instance>) -> (Picker, ManualClock) {
        let clock = ManualClock::new();
        let prefer = prefer
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = Picker::with(prefer, 3, Arc::new(clock.clone()), list);
        (p, clock)
    }

    /// What 200 picks of `mode` chose; the hash mode with varied keys.
    fn picked(p: &mut Picker, mode: SelectMode) -> HashSet<String> {
        (0..200u64)
            .map(|k| {
                let mode = match mode {
                    SelectMode::ConsistentHash(_) => {
                        SelectMode::ConsistentHash(hash_key(&k.to_string()))
                    }
                    m => m,
                };
                p.pick(mode, "t").unwrap()
            })
            .collect()
    }

    fn set(addrs: &[&str]) -> HashSet<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    fn eject(p: &mut Picker, addr: &str) {
        for _ in 0..3 {
            p.report_failure(addr);
        }
    }

    #[test]
    fn preference_sends_every_mode_to_the_matching_instances() {
        let list = zoned(&[("a", "eu"), ("b", "us"), ("c", "eu"), ("d", "us")]);
        let (mut p, _) = zone_picker(&[("zone", "eu")], list);
        for mode in MODES {
            assert_eq!(picked(&mut p, mode), set(&["a", "c"]), "{mode:?}");
        }
        assert_eq!(
            p.pickable_addrs(),
            ["a", "b", "c", "d"],
            "get_all lists all"
        );
    }

    #[test]
    fn preference_falls_back_to_the_others_while_no_match_is_pickable_and_returns() {
        let mut list = zoned(&[
            ("a", "eu"),
            ("b", "us"),
            ("c", "eu"),
            ("d", "us"),
            ("e", "us"),
        ]);
        list[0].status = Status::Draining;
        let (mut p, clock) = zone_picker(&[("zone", "eu")], list);
        assert_eq!(picked(&mut p, SelectMode::Random), set(&["c"]));
        // c, the only pickable preferred one, is ejected: the others take it.
        eject(&mut p, "c");
        for mode in MODES {
            assert_eq!(picked(&mut p, mode), set(&["b", "d", "e"]), "{mode:?}");
        }
        // Back after its second of ejection, with no fetch in between.
        clock.advance(Duration::from_secs(1));
        for mode in MODES {
            assert_eq!(picked(&mut p, mode), set(&["c"]), "{mode:?}");
        }
    }

    #[test]
    fn with_no_preference_met_at_all_picks_use_everyone() {
        let (mut p, _) = zone_picker(&[("zone", "ap")], zoned(&[("a", "eu"), ("b", "us")]));
        assert_eq!(picked(&mut p, SelectMode::RoundRobin), set(&["a", "b"]));
        // Conditions add up: both must hold.
        let (mut p, _) = zone_picker(
            &[("zone", "eu"), ("rack", "1")],
            zoned(&[("a", "eu"), ("b", "us")]),
        );
        assert_eq!(picked(&mut p, SelectMode::RoundRobin), set(&["a", "b"]));
    }

    #[test]
    fn ejected_and_draining_instances_are_never_picked_but_listed() {
        let mut list = zoned(&[("a", "x"), ("b", "x"), ("c", "x"), ("d", "x")]);
        list[3].status = Status::Draining;
        let (mut p, clock) = zone_picker(&[], list);
        eject(&mut p, "b");
        for mode in MODES {
            assert_eq!(picked(&mut p, mode), set(&["a", "c"]), "{mode:?}");
        }
        assert_eq!(p.pickable_addrs(), ["a", "c"]);
        let listed: Vec<(String, bool, Status)> = p
            .instances()
            .into_iter()
            .map(|i| (i.addr.clone(), i.is_ejected(), i.status()))
            .collect();
        assert_eq!(
            listed,
            [
                ("a".into(), false, Status::Up),
                ("b".into(), true, Status::Up),
                ("c".into(), false, Status::Up),
                ("d".into(), false, Status::Draining),
            ]
        );
        clock.advance(Duration::from_millis(999));
        assert!(!picked(&mut p, SelectMode::RoundRobin).contains("b"));
        clock.advance(Duration::from_millis(1));
        assert!(
            picked(&mut p, SelectMode::RoundRobin).contains("b"),
            "back after 1 s"
        );
        assert!(!p.instances()[1].is_ejected());
    }

    #[test]
    fn only_half_of_the_instances_can_be_out() {
        let (mut p, _) = zone_picker(&[], zoned(&[("a", "x"), ("b", "x"), ("c", "x")]));
        for a in ["a", "b", "c"] {
            eject(&mut p, a);
        }
        let out: Vec<bool> = p.instances().iter().map(Instance::is_ejected).collect();
        assert_eq!(out, [true, false, false], "one of three at most");
        // An address that is not listed changes nothing.
        eject(&mut p, "zz");
        assert_eq!(p.pickable_addrs(), ["b", "c"]);
    }

    #[test]
    fn draining_instances_do_not_count_towards_the_half_that_may_be_out() {
        // Half the fleet drains (a rolling deploy): the two that take work
        // must not both be ejected, leaving no one to pick.
        let mut list = zoned(&[("a", "x"), ("b", "x"), ("c", "x"), ("d", "x")]);
        list[2].status = Status::Draining;
        list[3].status = Status::Draining;
        let (mut p, _) = zone_picker(&[], list);
        eject(&mut p, "a");
        eject(&mut p, "b");
        assert!(
            !p.pickable_addrs().is_empty(),
            "every instance that takes work was ejected"
        );
    }

    #[test]
    fn a_shrinking_list_does_not_leave_more_than_half_out() {
        let (mut p, _) = zone_picker(
            &[],
            zoned(&[("a", "x"), ("b", "x"), ("c", "x"), ("d", "x")]),
        );
        eject(&mut p, "a");
        eject(&mut p, "b");
        assert_eq!(p.pickable_addrs(), ["c", "d"]);
        // c and d deregister: a and b, the servers left, are both still out.
        p.set(zoned(&[("a", "x"), ("b", "x")]));
        assert!(
            !p.pickable_addrs().is_empty(),
            "every listed instance is ejected"
        );
    }

    #[test]
    fn registering_again_ends_an_ejection() {
        let list = || zoned(&[("a", "x"), ("b", "x"), ("c", "x")]);
        let (mut p, _) = zone_picker(&[], list());
        eject(&mut p, "b");
        // The same listing again (a refresh) keeps it out.
        p.set(list());
        assert!(p.instances()[1].is_ejected());
        // It leaves the list and comes back: a new registration.
        p.set(zoned(&[("a", "x"), ("c", "x")]));
        p.set(list());
        assert!(!p.instances()[1].is_ejected());
        // Listed with other attributes: registered again.
        eject(&mut p, "b");
        assert!(p.instances()[1].is_ejected());
        let mut changed = list();
        changed[1].weight = 5;
        p.set(changed);
        assert!(!p.instances()[1].is_ejected());
        // A success ends it too.
        eject(&mut p, "b");
        p.report_success("b");
        assert!(!p.instances()[1].is_ejected());
    }

    #[test]
    fn weighted_round_robin_stays_exact_over_the_instances_left() {
        let mut list = zoned(&[("a", "x"), ("b", "x"), ("c", "x")]);
        for (i, w) in list.iter_mut().zip([3, 1, 2]) {
            i.weight = w;
        }
        let (mut p, _) = zone_picker(&[], list);
        p.pick(SelectMode::WeightedRoundRobin, "t").unwrap();
        eject(&mut p, "b");
        let picks: Vec<String> = (0..50)
            .map(|_| p.pick(SelectMode::WeightedRoundRobin, "t").unwrap())
            .collect();
        for window in picks.windows(5) {
            assert_eq!(window.iter().filter(|a| *a == "a").count(), 3, "{picks:?}");
            assert_eq!(window.iter().filter(|a| *a == "c").count(), 2, "{picks:?}");
        }
    }
}
