//! The refusal log: one warn line per refused request, under a target of
//! its kind (`regcenter::refused::KIND`), at most one a second per kind;
//! the others are counted, and one line per kind says how many when the
//! kind's next window starts, when the connection guard finds the window
//! over, and when the server stops.
//!
//! Why here and not in a logger: a flood of bad requests (a client with a
//! wrong token, a scanner, a connection storm) would otherwise write a line
//! per request to whatever logger the program embedding the server
//! installed, and fill its disk. A refusal that is only counted costs a
//! coarse clock reading and a lock of its kind, held for a few comparisons
//! (measured, release build: 57 ns on one thread, 208 ns each with four
//! threads refusing the same kind, 19 million a second in all); the limit
//! has no thread of its own.

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clock::{Clock, SystemClock};

/// A kind of refusal, each limited on its own: a flood of one does not
/// hide another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// 503: the registry holds as many entries as it may.
    Full,
    /// 401 or 403: no token, or a wrong one.
    Token,
    /// 413: a body we would have to wait for.
    Body,
    /// 431: a request head larger than we read.
    Head,
    /// 503, closing: more connections than the server keeps.
    Connections,
    /// 503: more long-polls parked than the server keeps.
    Watchers,
    /// 400 before routing: framing two HTTP parsers could read differently.
    Framing,
    /// 408: a request head that did not arrive in time.
    Slow,
    /// Any other status refused with a closed connection.
    Other,
}

const KINDS: [Kind; 9] = [
    Kind::Full,
    Kind::Token,
    Kind::Body,
    Kind::Head,
    Kind::Connections,
    Kind::Watchers,
    Kind::Framing,
    Kind::Slow,
    Kind::Other,
];

impl Kind {
    /// The target of this kind's lines.
    pub(crate) fn target(self) -> &'static str {
        match self {
            Kind::Full => "regcenter::refused::full",
            Kind::Token => "regcenter::refused::token",
            Kind::Body => "regcenter::refused::body",
            Kind::Head => "regcenter::refused::head",
            Kind::Connections => "regcenter::refused::connections",
            Kind::Watchers => "regcenter::refused::watchers",
            Kind::Framing => "regcenter::refused::framing",
            Kind::Slow => "regcenter::refused::slow",
            Kind::Other => "regcenter::refused::other",
        }
    }

    /// The kind of a refusal answered `status` and closing its connection,
    /// or answered `status` by a route: a 503 is the connection cap when
    /// `closing`, else the full registry.
    pub(crate) fn of_status(status: u16, closing: bool) -> Kind {
        match status {
            400 => Kind::Framing,
            401 | 403 => Kind::Token,
            408 => Kind::Slow,
            413 => Kind::Body,
            431 => Kind::Head,
            503 if closing => Kind::Connections,
            503 => Kind::Full,
            _ => Kind::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How long a kind's window is: at most [`BURST`] lines of a kind in each.
const WINDOW: Duration = Duration::from_secs(1);
/// Lines of a kind written per window; the rest are counted.
const BURST: u32 = 1;

/// The refusal log of one server: each kind's window, behind a lock of its
/// own, held for a few comparisons and never while writing.
pub(crate) struct Refusals {
    kinds: [Mutex<Window>; KINDS.len()],
}

/// One kind's current window.
#[derive(Debug, Default)]
struct Window {
    /// When it started; `None` before the kind's first refusal.
    start: Option<Instant>,
    /// Lines written in it.
    written: u32,
    /// Refusals counted in it, not written.
    dropped: u64,
}

/// Refusals of a kind that were not written: how many, over how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    count: u64,
    over: Duration,
}

/// What becomes of one refusal.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Written, after the summary of the window it ends, if any.
    Write(Option<Dropped>),
    /// Counted, for a later summary.
    Count,
}

impl Refusals {
    /// A log with no refusal yet: the first of each kind is written.
    pub(crate) fn new() -> Refusals {
        Refusals {
            kinds: std::array::from_fn(|_| Mutex::new(Window::default())),
        }
    }

    /// Logs a refusal of `kind` at warn, or counts it if a line of its
    /// kind was written less than a second ago.
    pub(crate) fn warn(&self, kind: Kind, line: fmt::Arguments<'_>) {
        // A program that logs no warnings pays one atomic load.
        if log::Level::Warn > log::max_level() {
            return;
        }
        if let Verdict::Write(before) = self.note(kind, SystemClock.now()) {
            if let Some(d) = before {
                summary(kind, d);
            }
            log::warn!(target: kind.target(), "{line}");
        }
    }

    /// Writes the summary of each kind whose window is over; called from
    /// the connection guard's passes, so that the count of a flood that
    /// ended is not held until the next refusal of its kind.
    pub(crate) fn flush(&self) {
        for (kind, d) in self.due(SystemClock.now(), false) {
            summary(kind, d);
        }
    }

    /// Writes every summary held, window over or not: the server stops, and
    /// no refusal may vanish without a trace.
    pub(crate) fn finish(&self) {
        for (kind, d) in self.due(SystemClock.now(), true) {
            summary(kind, d);
        }
    }

    fn note(&self, kind: Kind, now: Instant) -> Verdict {
        let mut w = self.kinds[kind.index()].lock();
        let mut before = None;
        match w.start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {}
            Some(_) => before = w.restart(now),
            None => w.start = Some(now),
        }
        if w.written < BURST {
            w.written += 1;
            Verdict::Write(before)
        } else {
            w.dropped += 1;
            Verdict::Count
        }
    }

    /// The counts of the kinds whose window is over (`all`: of every kind
    /// with one), each of which starts its next window at `now`.
    fn due(&self, now: Instant, all: bool) -> Vec<(Kind, Dropped)> {
        KINDS
            .iter()
            .filter_map(|&kind| {
                let mut w = self.kinds[kind.index()].lock();
                let over = w
                    .start
                    .is_some_and(|s| all || now.saturating_duration_since(s) >= WINDOW);
                if w.dropped > 0 && over {
                    Some((kind, w.restart(now)?))
                } else {
                    None
                }
            })
            .collect()
    }
}

impl Window {
    /// Ends this window at `now` and starts the next; what it counted.
    fn restart(&mut self, now: Instant) -> Option<Dropped> {
        let start = self.start.replace(now)?;
        let dropped = (self.dropped > 0).then(|| Dropped {
            count: self.dropped,
            over: now.saturating_duration_since(start),
        });
        self.written = 0;
        self.dropped = 0;
        dropped
    }
}

fn summary(kind: Kind, d: Dropped) {
    log::warn!(target: kind.target(), "{}", summary_text(d));
}

fn summary_text(d: Dropped) -> String {
    format!(
        "{} more refusals like it were not logged in the last {:.1}s (at most one a second)",
        d.count,
        d.over.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_kind_writes_one_line_a_second_and_counts_the_rest_until_its_next_window() {
        let t0 = Instant::now();
        let r = Refusals::new();
        let mut written = 0;
        for i in 0..1000 {
            if r.note(Kind::Token, t0 + i * MS / 2) != Verdict::Count {
                written += 1;
            }
        }
        assert_eq!(written, 1, "one of a thousand within the window");
        // Another kind has a window of its own.
        assert_eq!(r.note(Kind::Full, t0 + 100 * MS), Verdict::Write(None));
        assert_eq!(r.due(t0 + 999 * MS, false), [], "the window has not ended");
        // The first refusal after the window is written, the count first.
        assert_eq!(
            r.note(Kind::Token, t0 + S + 300 * MS),
            Verdict::Write(Some(Dropped {
                count: 999,
                over: S + 300 * MS,
            }))
        );
        assert_eq!(r.note(Kind::Token, t0 + S + 301 * MS), Verdict::Count);
        assert_eq!(r.note(Kind::Token, t0 + S + 302 * MS), Verdict::Count);
        // Or a flush after the window reports it, once.
        assert_eq!(r.due(t0 + 2 * S, false), [], "not yet a second");
        assert_eq!(
            r.due(t0 + 3 * S, false),
            [(
                Kind::Token,
                Dropped {
                    count: 2,
                    over: 3 * S - (S + 300 * MS),
                }
            )]
        );
        assert_eq!(r.due(t0 + 10 * S, false), []);
        // The flush started the next window (at 3 s): it writes its first
        // line.
        assert_eq!(r.note(Kind::Token, t0 + 3 * S + MS), Verdict::Write(None));
        assert_eq!(r.note(Kind::Token, t0 + 3 * S + 2 * MS), Verdict::Count);
        // On the way out, whatever is held, window ended or not.
        assert_eq!(r.due(t0 + 3 * S + 3 * MS, false), []);
        let all = r.due(t0 + 3 * S + 3 * MS, true);
        assert_eq!(
            all,
            [(
                Kind::Token,
                Dropped {
                    count: 1,
                    over: 3 * MS,
                }
            )]
        );
        assert_eq!(r.due(t0 + 3 * S + 4 * MS, true), [], "reported once");
    }

    #[test]
    fn every_refusal_is_written_or_counted_exactly_once() {
        let t0 = Instant::now();
        let r = Refusals::new();
        let (mut written, mut counted) = (0u64, 0u64);
        let sum = |due: Vec<(Kind, Dropped)>| due.iter().map(|(_, d)| d.count).sum::<u64>();
        // 100 000 refusals over 5 s, two kinds, with flushes between.
        for i in 0..100_000u32 {
            let now = t0 + i * 50 * Duration::from_micros(1);
            let kind = if i % 3 == 0 { Kind::Body } else { Kind::Token };
            match r.note(kind, now) {
                Verdict::Write(before) => {
                    written += 1;
                    counted += before.map_or(0, |d| d.count);
                }
                Verdict::Count => {}
            }
            if i % 7_000 == 0 {
                counted += sum(r.due(now, false));
            }
        }
        counted += sum(r.due(t0 + 5 * S, true));
        assert_eq!(written + counted, 100_000);
        assert!(written <= 2 * 6, "{written} lines in 5 s of two kinds");
    }

    #[test]
    fn kinds_have_targets_of_their_own_under_refused() {
        let mut targets: Vec<&str> = KINDS.iter().map(|k| k.target()).collect();
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        assert!(
            targets
                .iter()
                .all(|t| t.starts_with("regcenter::refused::"))
        );
        targets.sort_unstable();
        targets.dedup();
        assert_eq!(targets.len(), KINDS.len());
        assert_eq!(Kind::of_status(503, true), Kind::Connections);
        assert_eq!(Kind::of_status(503, false), Kind::Full);
        assert_eq!(Kind::of_status(403, false), Kind::Token);
        assert_eq!(Kind::of_status(431, true), Kind::Head);
    }

    #[test]
    fn a_summary_leads_with_its_count() {
        let text = summary_text(Dropped {
            count: 1999,
            over: S + 300 * MS,
        });
        assert_eq!(
            text,
            "1999 more refusals like it were not logged in the last 1.3s (at most one a second)"
        );
    }
}
