//! Time as the registry sees it, injectable so expiry can be tested without
//! sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A source of the current instant.
///
/// The registry reads time only through this trait; tests swap in a
/// [`ManualClock`] and move time forward by hand.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock, read at the kernel's tick resolution (a few
/// milliseconds) where that is cheaper.
///
/// Why: every register and renewal reads the clock, and on Linux the coarse
/// monotonic clock costs about 4 ns against about 25 ns for
/// [`Instant::now`]; TTLs are seconds, so a few milliseconds of resolution
/// change nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        coarse::now()
    }
}

/// The system clock in nanoseconds from an arbitrary origin: what the
/// registry reads on every heartbeat, without building an `Instant`.
pub(crate) fn system_nanos() -> u64 {
    coarse::nanos()
}

#[cfg(target_os = "linux")]
mod coarse {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    fn read() -> Duration {
        Duration::from_nanos(nanos())
    }

    pub(super) fn nanos() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec; this clock id exists on
        // every Linux since 2.6.32.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// An `Instant` at a fixed point, paired with the coarse reading there:
    /// later instants are that point plus the coarse clock's progress, so
    /// they never go backwards.
    pub(super) fn now() -> Instant {
        static BASE: OnceLock<(Instant, Duration)> = OnceLock::new();
        let (at, reading) = *BASE.get_or_init(|| (Instant::now(), read()));
        at + read().saturating_sub(reading)
    }
}

#[cfg(not(target_os = "linux"))]
mod coarse {
    use std::sync::OnceLock;
    use std::time::Instant;

    pub(super) fn now() -> Instant {
        Instant::now()
    }

    pub(super) fn nanos() -> u64 {
        static BASE: OnceLock<Instant> = OnceLock::new();
        BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// A clock that stands still until [`advance`](ManualClock::advance) moves it.
///
/// Clones share the same time.
///
/// ```
/// use regcenter::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - t0, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock standing at the moment of the call.
    pub fn new() -> ManualClock {
        ManualClock {
            start: Instant::now(),
            offset: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    /// Moves the clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock()
    }
}
