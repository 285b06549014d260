//! The snapshot: the table as text ([`Registry::snapshot`],
//! [`Registry::restore`]) and the file that keeps it across restarts.
//!
//! `--snapshot FILE`: the table written atomically every few seconds and at
//! shutdown, loaded at start, so a restarted registry answers with the same
//! servers at once instead of an empty list until the next heartbeats. The
//! server uses [`check_path`] before it binds, [`load`] and [`write_first`]
//! before it serves, and a [`Writer`] while it runs; the format and its
//! parser stay in here.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::Registry;
use super::entries::{Key, Labels, Stamp};
use super::options::MAX_WEIGHT;
use super::table::{Details, Raw};
use crate::error::{Error, Result};
use crate::protocol::{Status, validate_addr, validate_service};

impl Registry {
    /// The table as text, with each entry's remaining TTL: what
    /// [`restore`](Registry::restore) reads back. One line per entry
    /// between a header (format version, modify counter, time written) and
    /// a trailer (entry count), so a truncated copy is detected.
    ///
    /// The text is marked as written by a running registry: changes may
    /// follow that it does not hold, so restoring it moves the counter past
    /// them (see [`restore`](Registry::restore)). A
    /// [`RegistryServer`](crate::RegistryServer) marks the one it writes at
    /// shutdown as clean.
    pub fn snapshot(&self) -> String {
        self.snapshot_text(false)
    }

    /// [`snapshot`](Registry::snapshot), marked clean when nothing can
    /// change after it (the final one of a shutdown).
    fn snapshot_text(&self, clean: bool) -> String {
        use std::fmt::Write as _;
        let now = self.inner.now();
        // Before the lock: every change acknowledged before this time is in
        // the copy, which is what a crash test can check against.
        let written = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        // Under the lock only what `entries` copies too (cached details or
        // their raw rows, and the times): at 100 000 entries, formatting
        // them under the lock would stall every heartbeat for milliseconds.
        type Taken = (Arc<str>, u64, Result<Arc<Details>, Raw>, Vec<Stamp>);
        let (counter, services) = {
            let t = self.locked(now);
            let services: Vec<Taken> = t
                .services
                .values()
                .map(|svc| (svc.name.clone(), svc.index, svc.details(), svc.times()))
                .collect();
            (t.counter, services)
        };
        let clean = if clean { "yes" } else { "no" };
        let mut out = format!(
            "{SNAPSHOT_MAGIC} {SNAPSHOT_VERSION}\ncounter {counter}\nwritten {written}\nclean {clean}\n"
        );
        let mut n = 0usize;
        for (service, index, cached, times) in services {
            let details = self.settle_details(&service, index, cached);
            for row in &details.rows {
                let t = times[row.at];
                let left = t.deadline().map_or("-".to_string(), |d| {
                    (d.saturating_sub(now) / 1_000_000).to_string()
                });
                let meta: Vec<(String, String)> = row
                    .meta
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let _ = writeln!(
                    out,
                    "{service}\t{}\t{}\t{}\t{left}\t{}\t{}",
                    row.addr,
                    row.weight,
                    t.ttl().as_millis(),
                    crate::protocol::encode_meta(&meta),
                    row.status
                );
                n += 1;
            }
        }
        let _ = writeln!(out, "end {n}");
        out
    }

    /// Loads a [`snapshot`](Registry::snapshot) into the table: entries come
    /// back with the TTL they had left (those already expired are dropped),
    /// and the modify counter never goes below the snapshot's, so clients
    /// never see an index go backwards across a restart. A snapshot not
    /// marked clean (written while the registry ran, or by a version that
    /// did not mark them) moves the counter a further 2^40 forward, past
    /// every index the changes lost with the crash could have been given.
    /// Returns how many entries were loaded. A restored table is not
    /// [`recovering`](Registry::recovering).
    ///
    /// # Errors
    ///
    /// [`Error::BadSnapshot`] naming the line when the text is not a whole
    /// snapshot (corrupt or truncated); nothing is loaded then.
    pub fn restore(&self, text: &str) -> Result<usize> {
        let parsed = parse_snapshot(text)?;
        // The time the registry was down counts against the remaining TTLs
        // (wall clock: the monotonic clock does not survive a restart; a
        // clock set backwards counts as no time).
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let down = Duration::from_millis(now_ms.saturating_sub(parsed.written_ms));
        let now = self.inner.now();
        let mut t = self.locked(now);
        let floor = match parsed.clean {
            true => parsed.counter,
            false => parsed.counter.saturating_add(UNCLEAN_GAP),
        };
        t.raise_counter(floor);
        let mut loaded = 0;
        for mut e in parsed.entries {
            e.left = e.left.map(|l| l.saturating_sub(down));
            if e.left.is_some_and(|l| l.is_zero()) {
                continue;
            }
            let t = &mut *t;
            let key = Key::new(&e.addr);
            if t.services
                .get(e.service.as_str())
                .is_some_and(|s| s.entries.find(&key).is_some())
            {
                continue; // registered again before the restore: keep it
            }
            if t.entries >= self.inner.max_entries {
                log::warn!(
                    "snapshot entries beyond the limit of {} were not loaded",
                    self.inner.max_entries
                );
                break;
            }
            // Bounds may differ from those of the registry that wrote it.
            let ttl = match e.ttl.is_zero() {
                true => Duration::ZERO,
                false => self.effective_ttl(Some(e.ttl)),
            };
            // The counter is above the snapshot's already: no index a client
            // saw before the restart comes back.
            let labels = Labels {
                weight: e.weight,
                meta: &e.meta,
                status: Some(e.status),
            };
            t.add(
                &e.service,
                key,
                &e.meta,
                &self.inner.wake,
                |entries, key| entries.insert_restored(key, ttl, e.left, &labels, now),
            );
            loaded += 1;
        }
        self.recovered();
        Ok(loaded)
    }

    /// After a snapshot could not be restored: moves the counter as far
    /// past the one its header names as past an unclean snapshot's, so no
    /// index a client saw before comes back; when not even the header of
    /// `damaged` reads, past 0 (the best guess left). Returns the counter
    /// read.
    fn restore_counter(&self, damaged: &[u8]) -> Option<u64> {
        let read = header_counter(damaged);
        let mut t = self.locked(self.inner.now());
        t.raise_counter(read.unwrap_or(0).saturating_add(UNCLEAN_GAP));
        read
    }
}

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
        Err(e) => {
            let bad = Error::BadSnapshot {
                path: Some(path.to_owned()),
                line: None,
                reason: "reading it failed".into(),
                source: Some(e),
            };
            return set_aside(registry, path, &[], &bad);
        }
    };
    match restore_file(registry, path, &bytes) {
        Ok(n) => {
            log::info!("restored {n} entries from {}", path.display());
            Ok(())
        }
        Err(e) => set_aside(registry, path, &bytes, &e),
    }
}

/// Loads the bytes read from `path` into `registry`.
///
/// # Errors
///
/// [`Error::BadSnapshot`] naming `path` when they are not a whole snapshot
/// in UTF-8 text; nothing is loaded then.
fn restore_file(registry: &Registry, path: &Path, bytes: &[u8]) -> Result<usize> {
    let restored = match std::str::from_utf8(bytes) {
        Ok(text) => registry.restore(text),
        Err(e) => {
            let at = e.valid_up_to();
            Err(Error::BadSnapshot {
                path: None,
                line: Some(1 + bytes[..at].iter().filter(|&&b| b == b'\n').count()),
                reason: format!("byte {at} is not UTF-8 text"),
                source: None,
            })
        }
    };
    restored.map_err(|e| match e {
        Error::BadSnapshot {
            line,
            reason,
            source,
            ..
        } => Error::BadSnapshot {
            path: Some(path.to_owned()),
            line,
            reason,
            source,
        },
        other => other,
    })
}

/// What is wrong with an unusable snapshot, for messages that name the
/// file already: its line and reason, and the cause.
fn fault(bad: &Error) -> String {
    let Error::BadSnapshot {
        line,
        reason,
        source,
        ..
    } = bad
    else {
        return bad.to_string();
    };
    let mut why = match line {
        Some(n) => format!("line {n}: {reason}"),
        None => reason.clone(),
    };
    if let Some(cause) = source {
        why = format!("{why}: {cause}");
    }
    why
}

/// Renames an unusable snapshot to `FILE.corrupt` and moves the counter
/// past what its header names.
fn set_aside(registry: &Registry, path: &Path, bytes: &[u8], bad: &Error) -> Result<()> {
    let why = fault(bad);
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
fn write(registry: &Registry, path: &Path, clean: bool) -> std::io::Result<()> {
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

/// What the writes of a [`Writer`] came to, for `/metrics`.
#[derive(Default)]
pub(crate) struct Health {
    /// Unix time of the last write that succeeded, in milliseconds.
    pub(crate) last_success_ms: AtomicU64,
    /// Writes that failed.
    pub(crate) failures: AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    fn note(&self, result: &std::io::Result<()>) {
        match result {
            Ok(()) => self.last_success_ms.store(unix_ms(), Ordering::Relaxed),
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The thread that writes the snapshot every `every`; stopping it writes a
/// last one, marked clean.
pub(crate) struct Writer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    registry: Registry,
    path: PathBuf,
    health: Arc<Health>,
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
        // The caller's first write has just succeeded.
        let health = Arc::new(Health::default());
        health.note(&Ok(()));
        let (s, r, p, h) = (stop.clone(), registry.clone(), path.clone(), health.clone());
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
                    let written = write(&r, &p, false);
                    h.note(&written);
                    if let Err(e) = written {
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
            health,
        })
    }

    /// What its writes came to.
    pub(crate) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The file it writes.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the snapshot now, in turn with the thread's own writes.
    pub(crate) fn write_now(&self) -> std::io::Result<()> {
        let _turn = self.stop.0.lock();
        let written = write(&self.registry, &self.path, false);
        self.health.note(&written);
        written
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
        let written = write(&self.registry, &self.path, true);
        self.health.note(&written);
        written
    }
}

/// First line of a snapshot: the format and its version. Version 2 added
/// the `clean` line; version 1 files still load, as not clean. Version 3
/// added a seventh field to each entry, its status (`up`, `draining`);
/// entries of older files load as up.
const SNAPSHOT_MAGIC: &str = "regcenter-snapshot";
const SNAPSHOT_VERSION: u32 = 3;

/// How far the modify counter moves forward when a snapshot is restored
/// that was not written at a clean shutdown (a crash, `kill -9`, power
/// loss). The changes made after that snapshot are lost, and with them
/// the indexes they were given, which clients may have seen: the counter
/// must pass all of them, or a client could see an index again for a
/// different listing. 2^40 bounds the lost interval with room to spare: at
/// a million changes a second, far more than the table can make (tens of
/// thousands a second were measured over HTTP), 2^40 indexes last 12
/// days, and the interval between snapshots is seconds. It still leaves
/// room for 16 million crashes before a u64 runs out, and indexes stay
/// below 2^53 (exact for JSON readers that use doubles) for the first 8 000.
const UNCLEAN_GAP: u64 = 1 << 40;

struct SnapshotEntry {
    service: String,
    addr: String,
    weight: u32,
    ttl: Duration,
    left: Option<Duration>,
    meta: BTreeMap<String, String>,
    status: Status,
}

struct Snapshot {
    counter: u64,
    written_ms: u64,
    /// Written at a clean shutdown: nothing changed after it.
    clean: bool,
    entries: Vec<SnapshotEntry>,
}

/// The counter a snapshot's header names, read from bytes that need not be
/// a whole snapshot or text.
fn header_counter(bytes: &[u8]) -> Option<u64> {
    let mut lines = bytes.split(|&b| b == b'\n');
    std::str::from_utf8(lines.next()?)
        .ok()?
        .strip_prefix(SNAPSHOT_MAGIC)?;
    std::str::from_utf8(lines.next()?)
        .ok()?
        .strip_prefix("counter ")?
        .parse()
        .ok()
}

fn parse_snapshot(text: &str) -> Result<Snapshot> {
    let bad = |line: usize, what: &str| Error::BadSnapshot {
        path: None,
        line: Some(line),
        reason: what.to_string(),
        source: None,
    };
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let version = match lines.next().map(|(_, l)| l.split_once(' ')) {
        Some(Some((SNAPSHOT_MAGIC, "1"))) => 1,
        Some(Some((SNAPSHOT_MAGIC, "2"))) => 2,
        Some(Some((SNAPSHOT_MAGIC, "3"))) => 3,
        _ => return Err(bad(1, "not a regcenter snapshot (version 1 to 3)")),
    };
    let counter = match lines.next() {
        Some((_, l)) => l
            .strip_prefix("counter ")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| bad(2, "expected `counter N`"))?,
        None => return Err(bad(2, "truncated before the counter")),
    };
    let written_ms = match lines.next() {
        Some((_, l)) => l
            .strip_prefix("written ")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| bad(3, "expected `written UNIX_MS`"))?,
        None => return Err(bad(3, "truncated before the time it was written")),
    };
    let clean = match version {
        1 => false,
        _ => match lines.next() {
            Some((_, "clean yes")) => true,
            Some((_, "clean no")) => false,
            Some(_) => return Err(bad(4, "expected `clean yes` or `clean no`")),
            None => return Err(bad(4, "truncated before the clean mark")),
        },
    };
    let mut entries = Vec::new();
    for (n, line) in lines {
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>().ok() != Some(entries.len()) {
                return Err(bad(
                    n,
                    "the entry count does not match: truncated or edited",
                ));
            }
            return Ok(Snapshot {
                counter,
                written_ms,
                clean,
                entries,
            });
        }
        let f: Vec<&str> = line.split('\t').collect();
        let (service, addr, weight, ttl, left, meta, status) = match (version, &f[..]) {
            (1 | 2, &[service, addr, weight, ttl, left, meta]) => {
                (service, addr, weight, ttl, left, meta, Status::Up)
            }
            (1 | 2, _) => return Err(bad(n, "expected six tab-separated fields")),
            (_, &[service, addr, weight, ttl, left, meta, status]) => {
                let status = status
                    .parse::<Status>()
                    .map_err(|_| bad(n, "bad status (up or draining)"))?;
                (service, addr, weight, ttl, left, meta, status)
            }
            _ => return Err(bad(n, "expected seven tab-separated fields")),
        };
        validate_service(service).map_err(|e| bad(n, &e.to_string()))?;
        validate_addr(addr).map_err(|e| bad(n, &e.to_string()))?;
        let weight = weight
            .parse::<u32>()
            .ok()
            .filter(|w| (1..=MAX_WEIGHT).contains(w))
            .ok_or_else(|| bad(n, "bad weight"))?;
        let ms = |s: &str| s.parse::<u64>().map(Duration::from_millis);
        let ttl = ms(ttl).map_err(|_| bad(n, "bad ttl"))?;
        let left = match left {
            "-" => None,
            l => Some(ms(l).map_err(|_| bad(n, "bad remaining ttl"))?),
        };
        let meta = crate::protocol::parse_meta(meta)
            .map_err(|e| bad(n, &e))?
            .into_iter()
            .collect();
        entries.push(SnapshotEntry {
            service: service.to_string(),
            addr: addr.to_string(),
            weight,
            ttl,
            left,
            meta,
            status,
        });
    }
    Err(bad(
        text.lines().count(),
        "no `end` line: the snapshot is truncated",
    ))
}

#[cfg(test)]
mod tests;
