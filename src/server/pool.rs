//! The server's own threads: every request is routed and answered here, and
//! every parked watcher is answered here, never on the thread that committed
//! a change and never on one of tiny_http's.
//!
//! Why elastic: an answer is written with a blocking call, and a client that
//! does not read can hold that call for as long as the guard allows (see
//! `WRITE_LIMIT` in `guard.rs`). A fixed set of threads could be taken by a
//! few such clients. So the pool keeps `min` threads, and when jobs have
//! waited longer than a moment with every thread busy, the guard asks it for
//! one more ([`Pool::relieve`]), up to `max`. Threads beyond `min` end after
//! a few seconds without work.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// A unit of work; it receives the index of the thread running it.
pub(crate) type Job = Box<dyn FnOnce(usize) + Send>;

/// How long a thread beyond the minimum waits for work before it ends.
const SPARE_IDLE: Duration = Duration::from_secs(5);

struct State {
    jobs: VecDeque<(Instant, Job)>,
    threads: usize,
    idle: usize,
    /// Jobs being run right now.
    running: usize,
    next_index: usize,
    stopping: bool,
}

pub(crate) struct Pool {
    state: Mutex<State>,
    work: Condvar,
    /// Signalled when the pool has no job queued or running.
    quiet: Condvar,
    min: usize,
    max: usize,
    name: String,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts `min` threads named `{name}{index}`.
    pub(crate) fn start(min: usize, max: usize, name: String) -> std::io::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                threads: 0,
                idle: 0,
                running: 0,
                next_index: 0,
                stopping: false,
            }),
            work: Condvar::new(),
            quiet: Condvar::new(),
            min,
            max: max.max(min),
            name,
            handles: Mutex::new(Vec::new()),
        });
        for _ in 0..min {
            let spawned = pool.spawn(&mut pool.state.lock());
            if let Err(e) = spawned {
                // The threads already started would wait for work forever.
                pool.stop();
                return Err(e);
            }
        }
        Ok(pool)
    }

    /// Queues `job`; an idle thread takes it at once.
    pub(crate) fn submit(&self, job: Job) {
        let mut st = self.state.lock();
        st.jobs.push_back((Instant::now(), job));
        if st.idle > 0 {
            self.work.notify_one();
        }
    }

    /// Adds a thread for each job that has waited `after` with no thread
    /// idle (the threads being held by slow clients), up to the maximum;
    /// how many were added.
    pub(crate) fn relieve(self: &Arc<Self>, after: Duration) -> usize {
        let mut st = self.state.lock();
        if st.idle > 0 || st.stopping {
            return 0;
        }
        let stuck = st
            .jobs
            .iter()
            .take_while(|(at, _)| at.elapsed() >= after)
            .count()
            .min(self.max.saturating_sub(st.threads));
        for added in 0..stuck {
            if let Err(e) = self.spawn(&mut st) {
                log::warn!("starting another request thread failed: {e}");
                return added;
            }
        }
        stuck
    }

    /// Waits until no job is queued or running, or `deadline` passes.
    pub(crate) fn wait_quiet(&self, deadline: Instant) {
        let mut st = self.state.lock();
        while (!st.jobs.is_empty() || st.running > 0)
            && !self.quiet.wait_until(&mut st, deadline).timed_out()
        {}
    }

    /// Runs what is queued, then ends and joins every thread.
    pub(crate) fn stop(&self) -> bool {
        {
            let mut st = self.state.lock();
            st.stopping = true;
            self.work.notify_all();
        }
        let handles = std::mem::take(&mut *self.handles.lock());
        let mut panicked = false;
        for h in handles {
            panicked |= h.join().is_err();
        }
        panicked
    }

    fn spawn(self: &Arc<Self>, st: &mut State) -> std::io::Result<()> {
        let index = st.next_index;
        let pool = self.clone();
        let handle = thread::Builder::new()
            .name(format!("{}{index}", self.name))
            .spawn(move || pool.run(index))?;
        st.next_index += 1;
        st.threads += 1;
        let mut handles = self.handles.lock();
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
        Ok(())
    }

    fn run(&self, index: usize) {
        let mut st = self.state.lock();
        loop {
            if let Some((_, job)) = st.jobs.pop_front() {
                st.running += 1;
                drop(st);
                // A job answers its own panics (routes run under
                // catch_unwind); this keeps the thread for the next job if
                // anything else panics.
                if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
                    log::error!("a request job panicked; the thread goes on");
                }
                st = self.state.lock();
                st.running -= 1;
                if st.running == 0 && st.jobs.is_empty() {
                    self.quiet.notify_all();
                }
                continue;
            }
            if st.stopping {
                break;
            }
            st.idle += 1;
            let timed_out = self.work.wait_for(&mut st, SPARE_IDLE).timed_out();
            st.idle -= 1;
            if timed_out && st.jobs.is_empty() && st.threads > self.min {
                break;
            }
        }
        st.threads -= 1;
    }
}
