//! The signals of the long-running commands (README, "Signals"): every one
//! that would end the process is caught, each with a safe meaning.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::Failure;

/// What a signal asks of a long-running command (README, "Signals").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asked {
    /// SIGINT, SIGTERM, SIGHUP, SIGQUIT: stop gracefully (serve writes its
    /// final snapshot, register deregisters).
    Stop(i32),
    /// SIGUSR1: serve writes its snapshot at once.
    Snapshot,
    /// Another signal whose default would end the process: logged only.
    Ignore(i32),
}

/// Signals that stop a command gracefully.
const STOP_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Signals whose default action ends the process and that mean nothing
/// here: a stray `kill -USR2` or an expired timer must not cost the table.
fn ignored_signals() -> Vec<i32> {
    let mut v = vec![
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ];
    #[cfg(target_os = "linux")]
    {
        v.extend([libc::SIGPWR, libc::SIGSTKFLT]);
        // The real-time signals end the process by default too.
        v.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    }
    v
}

/// Every signal that would end the process, caught from before the work
/// starts, each with a safe meaning ([`Asked`]). Not caught: SIGKILL and
/// SIGSTOP (nobody can), and SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT,
/// SIGTRAP and SIGSYS, which report a fault of the process itself and keep
/// their default (a handler that returns would fault again).
///
/// A thread reads them and hands them over a channel, so a command can wait
/// for the next one with a timeout; dropping the handle ends and joins it.
pub(super) struct Signals {
    rx: std::sync::mpsc::Receiver<i32>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Signals {
    pub(super) fn install() -> Result<Signals, Failure> {
        let all = STOP_SIGNALS
            .into_iter()
            .chain([libc::SIGUSR1])
            .chain(ignored_signals());
        let mut signals = signal_hook::iterator::Signals::new(all)
            .map_err(|e| Failure::Run(format!("installing signal handlers failed: {e}").into()))?;
        let handle = signals.handle();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("regcenter-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Failure::Run(format!("spawning the signal thread failed: {e}").into()))?;
        Ok(Signals {
            rx,
            handle,
            thread: Some(thread),
        })
    }

    /// The next signal, waiting at most `within` (`None`: until one
    /// comes). `Disconnected` when the reading thread is gone (it is not,
    /// before the handle is dropped).
    pub(super) fn next(&self, within: Option<Duration>) -> Result<Asked, RecvTimeoutError> {
        let sig = match within {
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)?,
            Some(d) => self.rx.recv_timeout(d)?,
        };
        Ok(if STOP_SIGNALS.contains(&sig) {
            Asked::Stop(sig)
        } else if sig == libc::SIGUSR1 {
            Asked::Snapshot
        } else {
            Asked::Ignore(sig)
        })
    }

    /// Waits for a stop signal; logs the others (`on_snapshot` answers
    /// SIGUSR1). Returns the stop signal's name. Meanwhile, once a second,
    /// the log writes what its rate limit held back.
    pub(super) fn wait_for_stop(&self, mut on_snapshot: impl FnMut()) -> String {
        loop {
            match self.next(Some(Duration::from_secs(1))) {
                Ok(Asked::Stop(sig)) => return signal_name(sig),
                Ok(Asked::Snapshot) => on_snapshot(),
                Ok(Asked::Ignore(sig)) => log_ignored(sig),
                Err(RecvTimeoutError::Timeout) => log::logger().flush(),
                // The reading thread is gone: nothing could stop us later.
                Err(RecvTimeoutError::Disconnected) => {
                    return "none (the signal thread ended)".into();
                }
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn signal_name(sig: i32) -> String {
    match signal_hook::low_level::signal_name(sig) {
        Some(name) => format!("signal {sig} ({name})"),
        None => format!("signal {sig}"),
    }
}

pub(super) fn log_ignored(sig: i32) {
    log::warn!("{} received: ignored", signal_name(sig));
}
