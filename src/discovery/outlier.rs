//! Outlier ejection: instances that callers report failing again and again
//! are skipped by picks for a while, as Envoy's outlier detection does
//! (consecutive errors, a back-off that doubles, `max_ejection_percent`).
//!
//! A pure state machine over an injected [`Clock`]: it knows nothing of
//! lists or picks. The picker asks it which addresses are out and when the
//! next one comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Consecutive failures that eject an instance, unless configured.
pub(crate) const DEFAULT_EJECT_AFTER: u32 = 3;
/// The first ejection's length; each further one doubles it.
const FIRST_EJECTION: Duration = Duration::from_secs(1);
/// The longest ejection.
const MAX_EJECTION: Duration = Duration::from_secs(30);

/// What is known of one address.
#[derive(Debug, Default, Clone)]
struct Host {
    /// Failures since the last success or ejection.
    failures: u32,
    /// Ejections since the last success or re-registration: the back-off's
    /// exponent.
    ejections: u32,
    /// Out until then.
    until: Option<Instant>,
}

/// The failure bookkeeping of one service's instances.
pub(crate) struct Outliers {
    /// Failures in a row that eject; 0 turns ejection off.
    threshold: u32,
    clock: Arc<dyn Clock>,
    hosts: HashMap<String, Host>,
}

impl Outliers {
    pub(crate) fn new(threshold: u32, clock: Arc<dyn Clock>) -> Outliers {
        Outliers {
            threshold,
            clock,
            hosts: HashMap::new(),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// A failure of `addr`, one of `listed` instances. Returns whether it
    /// ejected `addr`.
    ///
    /// Failures reported while it is out are not counted: they are of calls
    /// that started before it was ejected. It is not ejected when that
    /// would leave more than half of the listed instances out (Envoy's
    /// `max_ejection_percent` 50): its failures keep counting, and the next
    /// one tries again.
    pub(crate) fn failure(&mut self, addr: &str, listed: usize) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let now = self.clock.now();
        let out = self.ejected_count(now);
        let host = self.hosts.entry(addr.to_string()).or_default();
        if host.until.is_some_and(|t| now < t) {
            return false;
        }
        host.failures = host.failures.saturating_add(1);
        if host.failures < self.threshold || (out + 1) * 2 > listed {
            return false;
        }
        let backoff = FIRST_EJECTION
            .saturating_mul(1 << host.ejections.min(5))
            .min(MAX_EJECTION);
        host.until = Some(now + backoff);
        host.ejections = host.ejections.saturating_add(1);
        host.failures = 0;
        true
    }

    /// A success of `addr`: its count and back-off start again, and an
    /// ejection in force ends (it answers). Returns whether it was out.
    pub(crate) fn success(&mut self, addr: &str) -> bool {
        let now = self.clock.now();
        match self.hosts.remove(addr) {
            Some(h) => h.until.is_some_and(|t| now < t),
            None => false,
        }
    }

    /// Keeps only the addresses for which `keep` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.hosts.retain(|a, _| keep(a));
    }

    /// Whether `addr` is out at `now`.
    pub(crate) fn is_ejected(&self, addr: &str, now: Instant) -> bool {
        self.hosts
            .get(addr)
            .and_then(|h| h.until)
            .is_some_and(|t| now < t)
    }

    /// How many addresses are out at `now`.
    pub(crate) fn ejected_count(&self, now: Instant) -> usize {
        self.hosts
            .values()
            .filter(|h| h.until.is_some_and(|t| now < t))
            .count()
    }

    /// When the next address that is out comes back.
    pub(crate) fn next_return(&self, now: Instant) -> Option<Instant> {
        self.hosts
            .values()
            .filter_map(|h| h.until)
            .filter(|&t| now < t)
            .min()
    }
}

impl std::fmt::Debug for Outliers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outliers")
            .field("threshold", &self.threshold)
            .field("hosts", &self.hosts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn outliers() -> (Outliers, ManualClock) {
        let clock = ManualClock::new();
        (Outliers::new(3, Arc::new(clock.clone())), clock)
    }

    fn fail(o: &mut Outliers, addr: &str, times: u32) -> bool {
        (0..times)
            .map(|_| o.failure(addr, 10))
            .last()
            .unwrap_or(false)
    }

    #[test]
    fn three_failures_in_a_row_eject_for_one_second() {
        let (mut o, clock) = outliers();
        assert!(!fail(&mut o, "a", 2));
        assert!(!o.is_ejected("a", clock.now()));
        assert!(o.failure("a", 10), "the third failure ejects");
        assert!(o.is_ejected("a", clock.now()));
        assert_eq!(
            o.next_return(clock.now()),
            Some(clock.now() + Duration::from_secs(1))
        );
        clock.advance(Duration::from_millis(999));
        assert!(o.is_ejected("a", clock.now()));
        clock.advance(Duration::from_millis(1));
        assert!(!o.is_ejected("a", clock.now()), "back after 1 s");
        assert_eq!(o.next_return(clock.now()), None);
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let (mut o, clock) = outliers();
        fail(&mut o, "a", 2);
        o.success("a");
        assert!(!fail(&mut o, "a", 2));
        assert!(!o.is_ejected("a", clock.now()));
        assert!(o.failure("a", 10));
    }

    #[test]
    fn failures_while_out_are_not_counted() {
        let (mut o, clock) = outliers();
        fail(&mut o, "a", 3);
        assert!(!fail(&mut o, "a", 10), "in-flight calls failing");
        clock.advance(Duration::from_secs(1));
        // Back, with a fresh count: two more failures do not eject.
        assert!(!fail(&mut o, "a", 2));
        assert!(!o.is_ejected("a", clock.now()));
    }

    #[test]
    fn each_ejection_doubles_up_to_thirty_seconds() {
        let (mut o, clock) = outliers();
        let mut lengths = Vec::new();
        for _ in 0..8 {
            assert!(fail(&mut o, "a", 3));
            let back = o.next_return(clock.now()).unwrap();
            let length = back - clock.now();
            lengths.push(length.as_secs());
            clock.advance(length);
        }
        assert_eq!(lengths, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_success_resets_the_back_off_and_ends_an_ejection() {
        let (mut o, clock) = outliers();
        fail(&mut o, "a", 3);
        clock.advance(Duration::from_secs(1));
        fail(&mut o, "a", 3);
        assert_eq!(
            o.next_return(clock.now()),
            Some(clock.now() + Duration::from_secs(2))
        );
        assert!(o.success("a"), "it was out");
        assert!(!o.is_ejected("a", clock.now()));
        fail(&mut o, "a", 3);
        assert_eq!(
            o.next_return(clock.now()),
            Some(clock.now() + Duration::from_secs(1)),
            "the back-off starts again at 1 s"
        );
    }

    #[test]
    fn a_forgotten_address_starts_afresh() {
        let (mut o, clock) = outliers();
        fail(&mut o, "a", 3);
        clock.advance(Duration::from_secs(1));
        fail(&mut o, "a", 3);
        o.retain(|a| a != "a");
        assert!(!o.is_ejected("a", clock.now()));
        fail(&mut o, "a", 3);
        assert_eq!(
            o.next_return(clock.now()),
            Some(clock.now() + Duration::from_secs(1))
        );
    }

    #[test]
    fn never_more_than_half_of_the_instances_out() {
        let (mut o, clock) = outliers();
        // Five listed: at most two out.
        for a in ["a", "b", "c", "d", "e"] {
            for _ in 0..3 {
                o.failure(a, 5);
            }
        }
        assert_eq!(o.ejected_count(clock.now()), 2);
        assert!(o.is_ejected("a", clock.now()) && o.is_ejected("b", clock.now()));
        assert!(!o.is_ejected("c", clock.now()));
        // When one comes back, the next failure of a waiting one ejects it.
        clock.advance(Duration::from_secs(1));
        assert!(o.failure("c", 5));
        assert_eq!(o.ejected_count(clock.now()), 1);
        // A single instance is never ejected; of two, one may be.
        let (mut one, _) = outliers();
        assert!(!(0..10).any(|_| one.failure("a", 1)));
        let (mut two, _) = outliers();
        assert!(fail_n(&mut two, "a", 3, 2));
        assert!(!fail_n(&mut two, "b", 10, 2));
    }

    fn fail_n(o: &mut Outliers, addr: &str, times: u32, listed: usize) -> bool {
        (0..times).any(|_| o.failure(addr, listed))
    }

    #[test]
    fn a_zero_threshold_never_ejects() {
        let clock = ManualClock::new();
        let mut o = Outliers::new(0, Arc::new(clock.clone()));
        assert!(!(0..100).any(|_| o.failure("a", 10)));
        assert_eq!(o.ejected_count(clock.now()), 0);
    }
}
