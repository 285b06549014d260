//! Client-side discovery: the `Discovery` trait, `SelectMode`, and one file
//! per implementation.

mod multi;
mod registry;

pub use multi::MultiServersDiscovery;
#[cfg(feature = "etcd")]
pub(crate) use registry::Fetched;
pub use registry::{RegistryDiscovery, RegistryDiscoveryBuilder, list_json, list_json_with};

use crate::error::{Error, Result};
use crate::rand;

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
/// Implementations are shared between threads (`&self` everywhere).
pub trait Discovery: Send + Sync {
    /// Fetches the list from its source now, whatever its age.
    ///
    /// # Errors
    ///
    /// The source's error; the current list is kept.
    fn refresh(&self) -> Result<()>;

    /// Replaces the list by hand.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddr`] when an address is invalid; nothing changes.
    fn update(&self, servers: Vec<String>) -> Result<()>;

    /// Picks one server.
    ///
    /// # Errors
    ///
    /// [`Error::NoServers`] when the list is empty, or the source's error
    /// when no list could ever be fetched.
    fn get(&self, mode: SelectMode) -> Result<String>;

    /// Every known server.
    ///
    /// # Errors
    ///
    /// The source's error when no list could ever be fetched.
    fn get_all(&self) -> Result<Vec<String>>;
}

/// A list with the state of each selection mode: the state both
/// discoveries share.
#[derive(Debug)]
struct Picker {
    servers: Vec<String>,
    weights: Vec<u32>,
    /// Consistent hashing: each address's stable hash, computed once.
    hashes: Vec<u64>,
    /// Round robin: the next position.
    index: usize,
    /// Smooth weighted round robin: each server's current weight.
    current: Vec<i64>,
}

impl Picker {
    fn new(servers: Vec<String>) -> Picker {
        let weights = vec![1; servers.len()];
        // The seed starts round robin at a random index so that many clients
        // started together do not all hit the first server.
        Picker {
            current: vec![0; servers.len()],
            hashes: servers.iter().map(|s| hash_key(s)).collect(),
            servers,
            weights,
            index: rand::below(usize::MAX >> 1),
        }
    }

    /// Replaces the list; round robin continues from where it was.
    fn set(&mut self, servers: Vec<String>, weights: Vec<u32>) {
        debug_assert_eq!(servers.len(), weights.len());
        if servers != self.servers || weights != self.weights {
            self.current = vec![0; servers.len()];
            self.hashes = servers.iter().map(|s| hash_key(s)).collect();
        }
        self.servers = servers;
        self.weights = weights;
    }

    fn pick(&mut self, mode: SelectMode, source: &str) -> Result<String> {
        self.try_pick(mode).ok_or_else(|| Error::NoServers {
            source: source.to_string(),
        })
    }

    /// A pick, or `None` when the list is empty.
    fn try_pick(&mut self, mode: SelectMode) -> Option<String> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let i = match mode {
            SelectMode::Random => rand::below(n),
            SelectMode::RoundRobin => {
                let i = self.index % n;
                self.index = (i + 1) % n;
                i
            }
            SelectMode::WeightedRoundRobin => self.smooth_weighted(),
            SelectMode::ConsistentHash(key) => {
                let key = splitmix(key);
                (0..n)
                    .max_by_key(|&i| splitmix(self.hashes[i] ^ key))
                    .expect("the list is not empty")
            }
        };
        Some(self.servers[i].clone())
    }

    /// Nginx's smooth weighted round robin: every server gains its weight,
    /// the richest is picked and pays the total. Over any `total` picks each
    /// server is picked exactly `weight` times, interleaved.
    fn smooth_weighted(&mut self) -> usize {
        let total: i64 = self.weights.iter().map(|&w| i64::from(w)).sum();
        let mut best = 0;
        for i in 0..self.servers.len() {
            self.current[i] += i64::from(self.weights[i]);
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        best
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

    fn picker(weights: &[u32]) -> Picker {
        let mut p = Picker::new(Vec::new());
        let servers = (0..weights.len()).map(|i| format!("s{i}")).collect();
        p.set(servers, weights.to_vec());
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
        before.set(all.clone(), vec![1; n]);
        let mut after = picker(&vec![1; n - 1]);
        let gone = &all[3];
        let rest: Vec<String> = all.iter().filter(|a| *a != gone).cloned().collect();
        after.set(rest, vec![1; n - 1]);
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
}
