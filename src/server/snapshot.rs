//! `--snapshot FILE`: the table written atomically every few seconds and at
//! shutdown, loaded at start, so a restarted registry answers with the same
//! servers at once instead of an empty list until the next heartbeats.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::registry::Registry;

/// Loads `path` into `registry` if it exists. A snapshot that does not
/// parse is reported, set aside as `FILE.corrupt`, and the registry starts
/// empty: a damaged file must not keep the registry from starting.
pub(crate) fn load(registry: &Registry, path: &Path) {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            log::error!(
                "reading the snapshot {} failed: {e}; starting empty",
                path.display()
            );
            return;
        }
    };
    match registry.restore(&text) {
        Ok(n) => log::info!("restored {n} entries from {}", path.display()),
        Err(e) => {
            let aside = with_suffix(path, ".corrupt");
            log::error!(
                "the snapshot {} is unusable ({e}); starting empty and keeping it as {}",
                path.display(),
                aside.display()
            );
            let _ = fs::rename(path, aside);
        }
    }
}

/// Writes the snapshot to `FILE.tmp`, syncs it, and renames it over
/// `FILE`: a crash leaves the old snapshot or the new one, never half.
pub(crate) fn write(registry: &Registry, path: &Path) -> std::io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(registry.snapshot().as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all(); // the rename itself, on filesystems that need it
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The thread that writes the snapshot every `every`; stopping it writes a
/// last one.
pub(crate) struct Writer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    registry: Registry,
    path: PathBuf,
}

impl Writer {
    pub(crate) fn start(
        registry: Registry,
        path: PathBuf,
        every: Duration,
        name: String,
    ) -> std::io::Result<Writer> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (s, r, p) = (stop.clone(), registry.clone(), path.clone());
        let thread = thread::Builder::new().name(name).spawn(move || {
            let (lock, cv) = &*s;
            let mut stopped = lock.lock();
            while !*stopped {
                if cv.wait_for(&mut stopped, every).timed_out()
                    && let Err(e) = write(&r, &p)
                {
                    log::error!("writing the snapshot {} failed: {e}", p.display());
                }
            }
        })?;
        Ok(Writer {
            stop,
            thread: Some(thread),
            registry,
            path,
        })
    }

    /// The file it writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the snapshot now, in turn with the thread's own writes.
    pub(crate) fn write_now(&self) -> std::io::Result<()> {
        let _turn = self.stop.0.lock();
        write(&self.registry, &self.path)
    }

    /// Stops the thread and writes the final snapshot.
    pub(crate) fn stop(&mut self) -> std::io::Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        let _ = t.join();
        write(&self.registry, &self.path)
    }
}
