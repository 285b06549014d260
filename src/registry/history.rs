//! What the registry did lately, for the status page: the last removals
//! (expiries and deregistrations) and per-second counts of registrations,
//! renewals and expiries over the last 10 minutes.
//!
//! Kept in the table, under its lock, and bounded: 50 removals and a ring
//! of 600 one-second slots. Counting a renewal adds one to a slot (the
//! heartbeat holds the lock already); a mass expiry records only its last
//! 50 addresses.

use std::collections::VecDeque;
use std::time::Duration;

use super::Registry;
use super::entries::{Key, Tick};

/// Removals kept, the newest.
pub(crate) const REMOVALS_KEPT: usize = 50;
/// Seconds counted, up to the current one.
pub(crate) const RATE_SECONDS: usize = 600;

const NANOS: u64 = 1_000_000_000;

/// What a slot counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    Registration,
    Renewal,
    Expiry,
}

/// Why an entry left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    Expired,
    Deregistered,
}

/// One entry that left the table, as [`Lately`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) service: String,
    pub(crate) addr: String,
    pub(crate) why: Removal,
    /// How long ago, on the registry's clock.
    pub(crate) ago: Duration,
}

/// The counts of one second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Second {
    pub(crate) registrations: u32,
    pub(crate) renewals: u32,
    pub(crate) expiries: u32,
}

/// The history at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lately {
    /// The last removals, newest first.
    pub(crate) removals: Vec<Removed>,
    /// [`RATE_SECONDS`] seconds, oldest first; the last is the current
    /// second, still counting. Seconds before the registry was built are
    /// zero.
    pub(crate) seconds: Vec<Second>,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    second: u64,
    counts: Second,
}

/// The table's part: see the module docs.
#[derive(Default)]
pub(super) struct History {
    removals: VecDeque<(String, String, Removal, Tick)>,
    /// Allocated at the first count: a table that never counts (a
    /// snapshot being parsed, say) costs nothing.
    slots: Vec<Slot>,
}

impl History {
    /// Counts `n` events at `now`.
    pub(super) fn count(&mut self, now: Tick, event: Event, n: usize) {
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); RATE_SECONDS];
        }
        let second = now / NANOS;
        let slot = &mut self.slots[(second % RATE_SECONDS as u64) as usize];
        if slot.second != second {
            *slot = Slot {
                second,
                counts: Second::default(),
            };
        }
        let c = match event {
            Event::Registration => &mut slot.counts.registrations,
            Event::Renewal => &mut slot.counts.renewals,
            Event::Expiry => &mut slot.counts.expiries,
        };
        *c = c.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// A deregistration of `addr` from `service` at `now`.
    pub(super) fn deregistered(&mut self, service: &str, addr: &str, now: Tick) {
        self.push(
            service.to_string(),
            addr.to_string(),
            Removal::Deregistered,
            now,
        );
    }

    /// The expiry of the last `n` entries of `expired` at `now`: counted,
    /// and the last [`REMOVALS_KEPT`] of them kept.
    pub(super) fn expired<S: AsRef<str>>(&mut self, expired: &[(S, Key<'_>)], n: usize, now: Tick) {
        self.count(now, Event::Expiry, n);
        let n = n.min(expired.len());
        let tail = &expired[expired.len() - n..];
        for (service, addr) in &tail[n.saturating_sub(REMOVALS_KEPT)..] {
            let (service, addr) = (service.as_ref().to_string(), addr.to_string());
            self.push(service, addr, Removal::Expired, now);
        }
    }

    fn push(&mut self, service: String, addr: String, why: Removal, at: Tick) {
        if self.removals.len() == REMOVALS_KEPT {
            self.removals.pop_front();
        }
        self.removals.push_back((service, addr, why, at));
    }

    /// The history as of `now`.
    pub(super) fn lately(&self, now: Tick) -> Lately {
        let removals = self
            .removals
            .iter()
            .rev()
            .map(|(service, addr, why, at)| Removed {
                service: service.clone(),
                addr: addr.clone(),
                why: *why,
                ago: Duration::from_nanos(now.saturating_sub(*at)),
            })
            .collect();
        let current = now / NANOS;
        let seconds = (0..RATE_SECONDS as u64)
            .rev()
            .map(|back| {
                let Some(second) = current.checked_sub(back) else {
                    return Second::default();
                };
                match self.slots.get((second % RATE_SECONDS as u64) as usize) {
                    Some(slot) if slot.second == second => slot.counts,
                    _ => Second::default(),
                }
            })
            .collect();
        Lately { removals, seconds }
    }
}

impl Registry {
    /// The last removals and the per-second counts of the last
    /// [`RATE_SECONDS`] seconds, after expiring what is due.
    pub(crate) fn lately(&self) -> Lately {
        let now = self.inner.now();
        let t = self.locked(now);
        t.history.lately(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::registry::PutOptions;
    use crate::registry::tests::{S, registry};

    #[test]
    fn removals_are_kept_newest_first_and_bounded() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        for i in 0..60 {
            reg.put("svc", &format!("d{i}")).unwrap();
            reg.remove("svc", &format!("d{i}")).unwrap();
        }
        reg.put_with("x", "e", &PutOptions::new().ttl(2 * S))
            .unwrap();
        clock.advance(3 * S);
        let lately = reg.lately();
        assert_eq!(lately.removals.len(), REMOVALS_KEPT);
        let first = &lately.removals[0];
        assert_eq!(
            (first.service.as_str(), first.addr.as_str(), first.why),
            ("x", "e", Removal::Expired)
        );
        assert_eq!(first.ago, Duration::ZERO, "expired by the call itself");
        assert_eq!(lately.removals[1].addr, "d59");
        assert_eq!(lately.removals[1].why, Removal::Deregistered);
        assert_eq!(lately.removals[1].ago, 3 * S);
        assert_eq!(lately.removals[49].addr, "d11");
    }

    #[test]
    fn seconds_count_registrations_renewals_and_expiries_for_ten_minutes() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        reg.put("", "a").unwrap();
        reg.put("", "b").unwrap();
        reg.put("", "a").unwrap();
        clock.advance(5 * S); // both expire
        let lately = reg.lately();
        assert_eq!(lately.seconds.len(), RATE_SECONDS);
        let at = |back: usize| lately.seconds[RATE_SECONDS - 1 - back];
        assert_eq!(
            at(5),
            Second {
                registrations: 2,
                renewals: 1,
                expiries: 0
            }
        );
        assert_eq!(at(0).expiries, 2);
        assert_eq!(at(1), Second::default());
        // A slot is reused after ten minutes, not added to.
        clock.advance(RATE_SECONDS as u32 * S - 5 * S);
        reg.put("", "c").unwrap();
        let lately = reg.lately();
        let last = lately.seconds[RATE_SECONDS - 1];
        assert_eq!((last.registrations, last.expiries), (1, 0));
        let total: u32 = lately.seconds.iter().map(|s| s.registrations).sum();
        assert_eq!(total, 1, "the first second has left the window");
    }

    #[test]
    fn a_mass_expiry_keeps_only_its_last_addresses() {
        let clock = ManualClock::new();
        let reg = registry(&clock);
        for i in 0..500 {
            reg.put("svc", &format!("m{i}")).unwrap();
        }
        clock.advance(5 * S);
        assert_eq!(reg.sweep(), 500);
        let lately = reg.lately();
        assert_eq!(lately.removals.len(), REMOVALS_KEPT);
        assert_eq!(lately.seconds[RATE_SECONDS - 1].expiries, 500);
    }
}
