//! The binary's log, on stderr, one line per record:
//!
//! ```text
//! 2026-12-02T00:17:42.123Z INFO  regcenter::registry: registered tcp@10.0.0.7:7001 in service "arith"
//! ```
//!
//! an RFC 3339 timestamp in UTC, the level, the target, the message.
//! `REGCENTER_LOG` is a level for regcenter's own lines (`debug`), or
//! env_logger's filters (`info,regcenter::server=debug`). The kinds of line
//! that a flood of requests multiplies ([`LIMITS`]) pass a [`RateLimit`]
//! first, so that a flood cannot fill a disk; refusals come limited
//! already, by the server itself (`src/server/refusals.rs`), and pass as
//! they are.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use log::Log as _;
use parking_lot::Mutex;

/// A kind of line that is rate-limited.
struct Limit {
    /// The target, exactly.
    target: &'static str,
    /// Lines of one kind written per second; the rest are counted.
    burst: u32,
    /// What the summary line calls the lines it counts.
    what: &'static str,
}

/// Lines one per request: registrations and deregistrations
/// (`regcenter bench` makes 10 000 in a second; the first ten stay
/// readable). Expiries are summarised by the registry itself, refusals by
/// the server (limiting them here too would count them twice).
const LIMITS: &[Limit] = &[Limit {
    target: "regcenter::registry",
    burst: 10,
    what: "registrations and deregistrations",
}];

fn limit_of(target: &str) -> Option<&'static Limit> {
    LIMITS.iter().find(|l| l.target == target)
}

/// How many lines of each kind pass in each window of time, the others
/// counted and reported when the kind's next window starts. The clock is
/// the caller's (`now`), so that a test can move it.
pub(super) struct RateLimit {
    window: Duration,
    kinds: HashMap<String, Window>,
}

struct Window {
    start: Instant,
    passed: u32,
    dropped: u64,
    /// The level of the last line dropped, for the summary.
    level: log::Level,
}

/// Lines of a kind that were not written: how many, over how long, and the
/// level of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dropped {
    pub(super) count: u64,
    pub(super) over: Duration,
    pub(super) level: log::Level,
}

impl RateLimit {
    pub(super) fn new(window: Duration) -> RateLimit {
        RateLimit {
            window,
            kinds: HashMap::new(),
        }
    }

    /// Whether a line of `kind` at `now` is written (`Some`, with what
    /// was dropped of that kind before it, to be reported first) or
    /// dropped (`None`): at most `burst` per window.
    pub(super) fn check(
        &mut self,
        kind: &str,
        level: log::Level,
        burst: u32,
        now: Instant,
    ) -> Option<Option<Dropped>> {
        let window = self.window;
        let w = match self.kinds.get_mut(kind) {
            Some(w) => w,
            None => self.kinds.entry(kind.to_owned()).or_insert(Window {
                start: now,
                passed: 0,
                dropped: 0,
                level,
            }),
        };
        let mut before = None;
        if now.saturating_duration_since(w.start) >= window {
            before = w.take(now);
        }
        if w.passed < burst {
            w.passed += 1;
            Some(before)
        } else {
            w.dropped += 1;
            w.level = level;
            None
        }
    }

    /// What was dropped of each kind whose window has ended (`all`: of
    /// every kind), to be reported now (it starts their next window).
    pub(super) fn due(&mut self, now: Instant, all: bool) -> Vec<(String, Dropped)> {
        let window = if all { Duration::ZERO } else { self.window };
        let mut due: Vec<(String, Dropped)> = self
            .kinds
            .iter_mut()
            .filter(|(_, w)| w.dropped > 0 && now.saturating_duration_since(w.start) >= window)
            .filter_map(|(kind, w)| Some((kind.clone(), w.take(now)?)))
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        due
    }
}

impl Window {
    /// Ends this window at `now` and starts the next; what it dropped.
    fn take(&mut self, now: Instant) -> Option<Dropped> {
        let dropped = (self.dropped > 0).then(|| Dropped {
            count: self.dropped,
            over: now.saturating_duration_since(self.start),
            level: self.level,
        });
        self.start = now;
        self.passed = 0;
        self.dropped = 0;
        dropped
    }
}

/// env_logger behind the rate limit.
struct Logger {
    inner: env_logger::Logger,
    limit: Mutex<RateLimit>,
}

impl Logger {
    fn summary(&self, target: &str, d: Dropped) {
        let (what, burst) = limit_of(target).map_or(("lines like it", 0), |l| (l.what, l.burst));
        self.inner.log(
            &log::Record::builder()
                .level(d.level)
                .target(target)
                .args(format_args!(
                    "{} more {what} were not logged in the last {:.1}s (at most {burst} a second)",
                    d.count,
                    d.over.as_secs_f64()
                ))
                .build(),
        );
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &log::Record) {
        if !self.inner.matches(r) {
            return;
        }
        let Some(limit) = limit_of(r.target()) else {
            return self.inner.log(r);
        };
        // The lock is not held while writing: other threads log meanwhile.
        let verdict = self
            .limit
            .lock()
            .check(r.target(), r.level(), limit.burst, Instant::now());
        if let Some(before) = verdict {
            if let Some(d) = before {
                self.summary(r.target(), d);
            }
            self.inner.log(r);
        }
    }

    /// Also writes the summaries that are due: the long-running commands
    /// flush once a second.
    fn flush(&self) {
        self.report(false);
        self.inner.flush();
    }
}

impl Logger {
    /// Writes the summaries due (`all`: every one held).
    fn report(&self, all: bool) {
        let due = self.limit.lock().due(Instant::now(), all);
        for (target, d) in due {
            self.summary(&target, d);
        }
    }
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Writes what the rate limit still holds back: the last lines a command
/// writes on its way out.
pub(crate) fn finish() {
    if let Some(l) = LOGGER.get() {
        l.report(true);
        l.inner.flush();
    }
}

/// Installs the log, as `REGCENTER_LOG` says (default `info`).
pub(crate) fn init() {
    let spec = std::env::var("REGCENTER_LOG").unwrap_or_default();
    let mut b = env_logger::Builder::new();
    b.format(|buf, r| {
        use std::io::Write as _;
        writeln!(
            buf,
            "{} {:<5} {}: {}",
            buf.timestamp_millis(),
            r.level(),
            r.target(),
            r.args()
        )
    });
    // A bare level is for regcenter's lines: ureq's and tiny_http's own
    // stay out unless a filter names them.
    match spec.trim() {
        "" => b.filter_module("regcenter", log::LevelFilter::Info),
        s => match s.parse::<log::LevelFilter>() {
            Ok(level) => b.filter_module("regcenter", level),
            Err(_) => b.parse_filters(s),
        },
    };
    let inner = b.build();
    let max = inner.filter();
    let logger = LOGGER.get_or_init(|| Logger {
        inner,
        limit: Mutex::new(RateLimit::new(Duration::from_secs(1))),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_kind_passes_its_burst_per_window_and_reports_the_rest_when_the_next_starts() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(S);
        let info = log::Level::Info;
        let mut passed = 0;
        for i in 0..1000 {
            if l.check("k", info, 2, t0 + i * MS / 2).is_some() {
                passed += 1;
            }
        }
        assert_eq!(passed, 2, "two of a thousand within the window");
        // Another kind has a window of its own.
        assert_eq!(l.check("other", info, 2, t0 + 100 * MS), Some(None));
        assert_eq!(l.due(t0 + 999 * MS, false), [], "the window has not ended");
        // The next line after the window passes, the count first.
        let before = l.check("k", log::Level::Warn, 2, t0 + S + 300 * MS);
        assert_eq!(
            before,
            Some(Some(Dropped {
                count: 998,
                over: S + 300 * MS,
                level: info,
            }))
        );
        assert_eq!(l.check("k", info, 2, t0 + S + 301 * MS), Some(None));
        assert_eq!(l.check("k", log::Level::Warn, 2, t0 + S + 302 * MS), None);
        // Or a flush after the window reports it, once.
        let due = l.due(t0 + 3 * S, false);
        assert_eq!(
            due,
            [(
                "k".to_string(),
                Dropped {
                    count: 1,
                    over: 3 * S - (S + 300 * MS),
                    level: log::Level::Warn,
                }
            )]
        );
        assert_eq!(l.due(t0 + 10 * S, false), []);
        assert_eq!(l.check("k", info, 2, t0 + 10 * S), Some(None));
        // On the way out, whatever is held, window ended or not.
        assert_eq!(l.check("k", info, 1, t0 + 10 * S + MS), None);
        assert_eq!(l.due(t0 + 10 * S + 2 * MS, false), []);
        let all = l.due(t0 + 10 * S + 2 * MS, true);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.count, 1);
    }

    #[test]
    fn registrations_are_limited_and_nothing_else() {
        assert_eq!(limit_of("regcenter::registry").unwrap().burst, 10);
        for other in [
            "regcenter::refused::full",
            "regcenter::refused::token",
            "regcenter::registry::snapshot",
            "regcenter::registry::table",
            "regcenter::server",
            "regcenter::refused",
        ] {
            assert!(limit_of(other).is_none(), "{other}");
        }
    }
}
