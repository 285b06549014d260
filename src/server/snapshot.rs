//! `--snapshot FILE`: the table written atomically every few seconds and at
//! shutdown, loaded at start, so a restarted registry answers with the same
//! servers at once instead of an empty list until the next heartbeats.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::registry::Registry;

/// Checks, without touching anything, that `path` can hold the snapshot:
/// its directory exists and can be written, and neither it nor `FILE.tmp`
/// is a directory. What this cannot foresee (a full disk) fails the first
/// write, still before anything is served.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (setting `snapshot`) naming what is wrong.
pub(crate) fn check_path(path: &Path) -> Result<()> {
    let bad = |what: String| {
        Err(Error::config(
            "snapshot",
            format!("{}: {what}", path.display()),
        ))
    };
    if path.file_name().is_none() || path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return bad("name a file, not a directory".into());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return bad(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return bad(format!(
                "the directory {} does not exist: create it first",
                dir.display()
            ));
        }
        Err(e) => {
            return bad(format!(
                "the directory {} cannot be read: {e}",
                dir.display()
            ));
        }
    }
    // The file itself is followed (a symlink to a file is fine: the rename
    // replaces the link); FILE.tmp is unlinked, which a directory is not.
    let tmp = with_suffix(path, ".tmp");
    if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return bad("it is a directory: name a file in it".into());
    }
    if fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
        return bad(format!("{} is a directory: remove it", tmp.display()));
    }
    if let Err(e) = writable(dir) {
        return bad(format!(
            "the directory {} cannot be written: {e}",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether this process may create and rename files in `dir` (access(2),
/// which also reports a read-only filesystem).
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: access(2) reads a NUL-terminated path that outlives the call.
    match unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Loads `path` into `registry` if it exists. A snapshot that cannot be
/// read or does not parse is reported and set aside as `FILE.corrupt`, and
/// the registry starts empty (its counter past the one the file names, when
/// that much can be read): a damaged file must not keep the registry from
/// starting, and the first write must not destroy what an operator may
/// still recover from it.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (setting `snapshot`) when an unusable file
/// cannot be set aside: starting then would overwrite it with an empty
/// table.
pub(crate) fn load(registry: &Registry, path: &Path) -> Result<()> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return set_aside(registry, path, &[], &format!("reading it failed: {e}")),
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let why = format!("byte {} is not UTF-8 text", e.valid_up_to());
            return set_aside(registry, path, &bytes, &why);
        }
    };
    match registry.restore(text) {
        Ok(n) => {
            log::info!("restored {n} entries from {}", path.display());
            Ok(())
        }
        Err(e) => set_aside(registry, path, &bytes, &e.to_string()),
    }
}

/// Renames an unusable snapshot to `FILE.corrupt` and moves the counter
/// past what its header names.
fn set_aside(registry: &Registry, path: &Path, bytes: &[u8], why: &str) -> Result<()> {
    let aside = with_suffix(path, ".corrupt");
    if let Err(e) = fs::rename(path, &aside) {
        return Err(Error::config(
            "snapshot",
            format!(
                "{} is unusable ({why}) and could not be kept aside as {} ({e}); \
                 move it away, or fix it, and start again",
                path.display(),
                aside.display()
            ),
        ));
    }
    log::error!(
        "the snapshot {} is unusable ({why}); kept it as {} and starting empty",
        path.display(),
        aside.display()
    );
    if registry.restore_counter(bytes).is_none() {
        log::warn!(
            "the modify counter of {} could not be read: indexes continue from 2^40, \
             past those of a registry that had not crashed before",
            aside.display()
        );
    }
    Ok(())
}

/// Writes the snapshot to `FILE.tmp`, syncs it, and renames it over
/// `FILE`: a crash leaves the old snapshot or the new one, never half.
/// `clean` marks the final snapshot of a shutdown, after which nothing
/// changes.
pub(crate) fn write(registry: &Registry, path: &Path, clean: bool) -> std::io::Result<()> {
    let text = registry.snapshot_text(clean);
    let tmp = with_suffix(path, ".tmp");
    // Whatever is at FILE.tmp (a leftover of a crash, or a symlink or hard
    // link someone planted to have another file overwritten) is unlinked,
    // never opened; and the file is created exclusively (O_EXCL, which does
    // not follow symlinks), so one planted between the two fails this write
    // instead of redirecting it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.sync_all()) {
        drop(f);
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all(); // the rename itself, on filesystems that need it
    }
    Ok(())
}

/// The first write of a run, after [`load`] and before the table's changes
/// are served: the file must carry the counter this run starts from,
/// marked unclean, before a client can see an index of this run.
/// Otherwise a crash before the first periodic write would restore the
/// older counter (from a clean file, without the gap; from an unclean one,
/// to the same value as this run's start) and give this run's indexes out
/// again.
///
/// # Errors
///
/// [`Error::Io`] when the write fails.
pub(crate) fn write_first(registry: &Registry, path: &Path) -> Result<()> {
    write(registry, path, false)
        .map_err(|e| Error::io(format!("write the snapshot {}", path.display()), e))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The thread that writes the snapshot every `every`; stopping it writes a
/// last one, marked clean.
pub(crate) struct Writer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    registry: Registry,
    path: PathBuf,
}

impl Writer {
    /// Starts the thread; the caller has written the first snapshot (see
    /// [`write_first`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the spawn fails.
    pub(crate) fn start(
        registry: Registry,
        path: PathBuf,
        every: Duration,
        name: String,
    ) -> Result<Writer> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (s, r, p) = (stop.clone(), registry.clone(), path.clone());
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut stopped = lock.lock();
                let mut next = Instant::now() + every;
                while !*stopped {
                    if !cv.wait_until(&mut stopped, next).timed_out() || *stopped {
                        continue; // woken to stop, or spuriously
                    }
                    if let Err(e) = write(&r, &p, false) {
                        log::error!("writing the snapshot {} failed: {e}", p.display());
                    }
                    // Writes start every interval however long one takes, so
                    // the file on disk is at most an interval and a write
                    // old; after a stalled write the next follows at once.
                    next = (next + every).max(Instant::now());
                }
            })
            .map_err(|e| Error::io("spawn the snapshot thread", e))?;
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
        write(&self.registry, &self.path, false)
    }

    /// Stops the thread and writes the final snapshot, marked clean: the
    /// caller has stopped everything that changes the table.
    pub(crate) fn stop(&mut self) -> std::io::Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        let _ = t.join();
        write(&self.registry, &self.path, true)
    }
}
