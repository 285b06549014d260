//! `MultiServersDiscovery`: a fixed list of servers, picked from as the
//! seed's discovery of the same name picks.

use parking_lot::Mutex;

use super::{Discovery, Instance, Picker, SelectMode, validate_all};
use crate::error::Result;

/// A discovery over a fixed list that only changes through
/// [`update`](Discovery::update), as the seed's `MultiServersDiscovery`.
///
/// ```
/// use regcenter::{Discovery, MultiServersDiscovery, SelectMode};
///
/// let d = MultiServersDiscovery::new(vec!["tcp@a:1".into(), "tcp@b:2".into()])?;
/// let first = d.get(SelectMode::RoundRobin)?;
/// let second = d.get(SelectMode::RoundRobin)?;
/// assert_ne!(first, second);
/// # Ok::<(), regcenter::Error>(())
/// ```
#[derive(Debug)]
pub struct MultiServersDiscovery {
    picker: Mutex<Picker>,
}

impl MultiServersDiscovery {
    /// A discovery over `servers`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddr`](crate::Error::InvalidAddr) for an invalid
    /// address.
    pub fn new(servers: Vec<String>) -> Result<MultiServersDiscovery> {
        validate_all(&servers)?;
        Ok(MultiServersDiscovery {
            picker: Mutex::new(Picker::new(servers)),
        })
    }
}

impl Discovery for MultiServersDiscovery {
    /// Nothing to fetch: a fixed list is always current.
    fn refresh(&self) -> Result<()> {
        Ok(())
    }

    fn update(&self, servers: Vec<String>) -> Result<()> {
        validate_all(&servers)?;
        self.picker
            .lock()
            .set(servers.into_iter().map(Instance::new).collect());
        Ok(())
    }

    fn get(&self, mode: SelectMode) -> Result<String> {
        self.picker.lock().pick(mode, "fixed list")
    }

    fn get_all(&self) -> Result<Vec<String>> {
        Ok(self.picker.lock().pickable_addrs())
    }

    fn instances(&self) -> Result<Vec<Instance>> {
        Ok(self.picker.lock().instances())
    }

    fn get_instance(&self, mode: SelectMode) -> Result<Instance> {
        self.picker
            .lock()
            .try_pick_instance(mode)
            .ok_or_else(|| crate::Error::NoServers {
                source: "fixed list".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn list(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tcp@s{i}")).collect()
    }

    #[test]
    fn round_robin_is_an_exact_cycle() {
        let d = MultiServersDiscovery::new(list(3)).unwrap();
        let first: Vec<String> = (0..3)
            .map(|_| d.get(SelectMode::RoundRobin).unwrap())
            .collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, list(3), "each server once per cycle");
        for round in 0..4 {
            for (i, expected) in first.iter().enumerate() {
                assert_eq!(
                    &d.get(SelectMode::RoundRobin).unwrap(),
                    expected,
                    "round {round} pick {i}"
                );
            }
        }
    }

    #[test]
    fn round_robin_keeps_cycling_across_updates() {
        let d = MultiServersDiscovery::new(list(4)).unwrap();
        let start = d.picker.lock().index % 4;
        d.get(SelectMode::RoundRobin).unwrap();
        d.update(list(4)).unwrap();
        let next = d.get(SelectMode::RoundRobin).unwrap();
        assert_eq!(next, list(4)[(start + 1) % 4]);
    }

    #[test]
    fn round_robin_starts_at_a_random_index() {
        let starts: std::collections::HashSet<String> = (0..200)
            .map(|_| {
                MultiServersDiscovery::new(list(5))
                    .unwrap()
                    .get(SelectMode::RoundRobin)
                    .unwrap()
            })
            .collect();
        assert!(starts.len() > 1, "every discovery started at {starts:?}");
    }

    #[test]
    fn random_picks_every_server() {
        let d = MultiServersDiscovery::new(list(5)).unwrap();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..5_000 {
            *counts
                .entry(d.get(SelectMode::Random).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 5);
        assert!(counts.values().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn an_empty_list_is_a_clear_error() {
        let d = MultiServersDiscovery::new(vec![]).unwrap();
        let e = d.get(SelectMode::Random).unwrap_err();
        assert!(matches!(e, Error::NoServers { .. }));
        assert_eq!(e.to_string(), "no available servers from fixed list");
    }

    #[test]
    fn invalid_addresses_are_refused() {
        assert!(MultiServersDiscovery::new(vec!["a,b".into()]).is_err());
        let d = MultiServersDiscovery::new(list(1)).unwrap();
        assert!(d.update(vec!["ok".into(), "not ok".into()]).is_err());
        assert_eq!(d.get_all().unwrap(), list(1), "nothing changed");
    }
}
