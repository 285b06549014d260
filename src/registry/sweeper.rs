//! The [`Sweeper`]: a thread that expires entries when their deadline
//! passes, so watchers learn of a crashed server even when nobody calls
//! the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use parking_lot::MutexGuard;

use super::Registry;
use super::table::{Inner, log_expired};
use crate::error::{Error, Result};

/// The thread that expires entries on time; see [`Registry::start_sweeper`].
///
/// Stopping or dropping it ends and joins the thread.
#[must_use = "dropping the Sweeper stops it"]
pub struct Sweeper {
    registry: Registry,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sweeper {
    /// Stops the thread and waits for it.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] if the thread panicked.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        {
            let _t = self.registry.inner.table.lock();
            self.stop.store(true, Ordering::Release);
            self.registry.inner.wake.notify_all();
        }
        handle.join().map_err(|_| Error::Stopped {
            what: "sweeper (it panicked)".into(),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

impl std::fmt::Debug for Sweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweeper").finish_non_exhaustive()
    }
}

impl Registry {
    /// Starts a thread that removes entries as soon as their deadline passes,
    /// so a crashed server leaves the listing on time even when nobody asks.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the thread cannot be spawned.
    pub fn start_sweeper(&self) -> Result<Sweeper> {
        self.start_sweeper_named("regcenter-sweep".to_string())
    }

    pub(crate) fn start_sweeper_named(&self, name: String) -> Result<Sweeper> {
        let inner = self.inner.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || sweep_loop(&inner, &thread_stop))
            .map_err(|e| Error::io("spawn sweeper thread", e))?;
        Ok(Sweeper {
            registry: self.clone(),
            stop,
            handle: Some(handle),
        })
    }
}

/// Longest the sweeper sleeps without looking at the clock; bounds how late
/// a [`ManualClock`](crate::ManualClock) moved by hand is noticed.
const SWEEP_MAX_WAIT: Duration = Duration::from_secs(1);

fn sweep_loop(inner: &Inner, stop: &AtomicBool) {
    let mut t = inner.table.lock();
    // The flag is set under the table lock, so it cannot change between this
    // check and the wait below: no stop is missed.
    while !stop.load(Ordering::Acquire) {
        let now = inner.now();
        t.expire_due(now);
        let changed = std::mem::take(&mut t.changed);
        let retired = std::mem::take(&mut t.retired);
        let expired = std::mem::take(&mut t.expired);
        if !changed.is_empty() || !retired.is_empty() || !expired.is_empty() {
            MutexGuard::unlocked(&mut t, || {
                drop(retired);
                log_expired(&expired);
                inner.notify(&changed);
            });
        }
        let wait = t
            .soonest
            .first()
            .map_or(SWEEP_MAX_WAIT, |(at, _)| {
                Duration::from_nanos(at.saturating_sub(now))
            })
            .min(SWEEP_MAX_WAIT);
        // Also woken when an earlier deadline is scheduled or on stop.
        inner.wake.wait_for(&mut t, wait);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::registry::tests::S;

    #[test]
    fn the_sweeper_expires_entries_without_callers() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .default_ttl(Duration::from_millis(50))
            .min_ttl(Duration::from_millis(10))
            .build()
            .unwrap();
        let sweeper = reg.start_sweeper().unwrap();
        let counter = reg.counter();
        reg.put("", "a").unwrap();
        let deadline = Instant::now() + 5 * S;
        // Read the counter only: it does not expire entries itself, so it
        // moves past the registration only through the sweeper.
        while reg.counter() == counter + 1 {
            assert!(
                Instant::now() < deadline,
                "the sweeper did not expire the entry"
            );
            std::thread::yield_now();
        }
        assert_eq!(reg.counter(), counter + 2);
        sweeper.stop().unwrap();
    }
}
