//! The binary's log: the shape of every line, the request and refusal
//! lines, and floods summarised rather than written one line each.

use std::time::{Duration, Instant};

use crate::common::process::Process;
use crate::common::raw;

const P: &str = "/myRPC/registry";

/// A client that takes any status as an answer, and no proxy from the
/// environment.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into()
}

/// A log line taken apart: timestamp, level, target, message.
fn fields(line: &str) -> Option<(&str, &str, &str, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let (level, rest) = rest.trim_start().split_once(' ')?;
    let (target, msg) = rest.trim_start().split_once(": ")?;
    Some((ts, level, target, msg))
}

/// Whether `ts` is an RFC 3339 UTC timestamp: `2026-12-02T00:17:42.123Z`.
fn is_rfc3339_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && ts.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp.
fn epoch_secs(ts: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
    days_from_civil(n(0..4), n(5..7), n(8..10)) * 86_400
        + n(11..13) * 3600
        + n(14..16) * 60
        + n(17..19)
}

fn assert_shape(line: &str) {
    let (ts, level, target, _) =
        fields(line).unwrap_or_else(|| panic!("not TIMESTAMP LEVEL TARGET: MESSAGE: {line:?}"));
    assert!(
        is_rfc3339_utc(ts),
        "not an RFC 3339 UTC timestamp: {line:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (epoch_secs(ts) - now).abs() < 600,
        "{ts} is not the time in UTC: {line:?}"
    );
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
        "no level: {line:?}"
    );
    assert!(target.starts_with("regcenter"), "no target: {line:?}");
}

#[test]
fn every_line_has_a_utc_timestamp_a_level_and_a_target_and_requests_are_logged_at_debug() {
    let (mut p, addr) = Process::serve_env(&["--max-entries", "1"], &[("REGCENTER_LOG", "debug")]);
    let r = raw(addr, "POST", P, &[("X-Myrpc-Server", "tcp@a:1")]);
    assert_eq!(r.status, 200);
    let line = p.line_containing("registered tcp@a:1", Duration::from_secs(10));
    assert!(line.contains("the default service"), "{line}");
    // A debug line per request: client, method, path, status, duration.
    let r = raw(addr, "GET", &format!("{P}?format=text"), &[]);
    assert_eq!(r.status, 200);
    let line = p.line_containing(&format!("GET {P}?format=text"), Duration::from_secs(10));
    assert!(line.contains(" 127.0.0.1:"), "no client address: {line}");
    assert!(line.contains(" 200 "), "no status: {line}");
    assert!(line.trim_end().ends_with("ms"), "no duration: {line}");
    // A refusal: the registry is full.
    let r = raw(addr, "POST", P, &[("X-Myrpc-Server", "tcp@b:1")]);
    assert_eq!(r.status, 503);
    let line = p.line_containing("refused", Duration::from_secs(10));
    assert!(line.contains("503"), "{line}");
    assert!(line.contains("tcp@b:1") || line.contains("full"), "{line}");
    p.signal(libc::SIGTERM);
    let (code, lines) = p.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{lines:#?}");
    for l in &lines {
        assert_shape(l);
        assert!(!l.contains("service \"\""), "{l}");
    }
}

/// The counts of `what` logged one line each and summarised: the lines
/// with `line`, and the numbers the summary lines of `target` give.
fn logged_and_summarised(lines: &[String], line: &str, target: &str) -> (u64, u64) {
    let of_target: Vec<&str> = lines
        .iter()
        .filter_map(|l| fields(l))
        .filter(|(_, _, t, _)| *t == target)
        .map(|(_, _, _, m)| m)
        .collect();
    let each = of_target
        .iter()
        .filter(|m| m.contains(line) && !m.contains("not logged"))
        .count() as u64;
    let summarised = of_target
        .iter()
        .filter(|m| m.contains("not logged"))
        .map(|m| {
            m.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count first in {m:?}"))
        })
        .sum();
    (each, summarised)
}

#[test]
fn a_flood_of_registrations_and_refusals_is_summarised_not_logged_one_line_each() {
    const REGISTERED: u64 = 150;
    const REFUSED: u64 = 150;
    let (mut p, addr) = Process::serve(&["--max-entries", &REGISTERED.to_string()]);
    let agent = agent();
    let started = Instant::now();
    let mut refused = 0;
    for i in 0..REGISTERED + REFUSED {
        let r = agent
            .post(format!("http://{addr}{P}/flood"))
            .header(
                "X-Myrpc-Server",
                format!("tcp@10.0.{}.{}:1", i / 256, i % 256),
            )
            .send_empty()
            .unwrap();
        refused += u64::from(r.status() == 503);
    }
    let secs = started.elapsed().as_secs();
    assert_eq!(refused, REFUSED);
    p.signal(libc::SIGTERM);
    let (code, lines) = p.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{lines:#?}");
    for l in &lines {
        assert_shape(l);
    }
    let (each, summarised) =
        logged_and_summarised(&lines, "registered tcp@10.0.0.", "regcenter::registry");
    assert_eq!(each + summarised, REGISTERED, "{lines:#?}");
    assert!(
        each <= 10 * (secs + 2),
        "{each} registrations logged one line each in {secs}s: {lines:#?}"
    );
    let (each, summarised) = logged_and_summarised(&lines, "refused", "regcenter::refused::full");
    assert_eq!(each + summarised, REFUSED, "{lines:#?}");
    assert!(
        each <= secs + 2,
        "{each} refusals logged one line each in {secs}s: {lines:#?}"
    );
}

/// Refusal lines as a program that embeds a [`regcenter::RegistryServer`]
/// sees them through a logger of its own, which limits nothing.
mod capture {
    use parking_lot::Mutex;
    use std::thread::ThreadId;

    /// A refusal line: its target and message.
    pub(super) type Line = (String, String);

    /// Whose lines are kept: the threads of one server (their names start
    /// with `rcPORT-`) and the thread that stops it; other tests' servers
    /// refuse too, and their lines are dropped.
    struct Watch {
        prefix: String,
        stopper: ThreadId,
        lines: Vec<Line>,
    }

    static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with("regcenter::refused::")
        }

        fn log(&self, r: &log::Record) {
            if !self.enabled(r.metadata()) {
                return;
            }
            let me = std::thread::current();
            let mut watch = WATCH.lock();
            if let Some(w) = &mut *watch
                && (me.id() == w.stopper || me.name().is_some_and(|n| n.starts_with(&w.prefix)))
            {
                w.lines.push((r.target().to_string(), r.args().to_string()));
            }
        }

        fn flush(&self) {}
    }

    /// The refusal lines that the server on `port` writes while `f` runs on
    /// this thread; `f` reads those written so far with [`so_far`].
    pub(super) fn watch(port: u16, f: impl FnOnce()) -> Vec<Line> {
        static CAPTURE: Capture = Capture;
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            log::set_logger(&CAPTURE).expect("no other logger in the loopback tests");
            // Warn: the request lines at debug are not even formatted.
            log::set_max_level(log::LevelFilter::Warn);
        });
        // One watch at a time: the tests that watch take turns.
        static TURN: Mutex<()> = Mutex::new(());
        let _turn = TURN.lock();
        *WATCH.lock() = Some(Watch {
            prefix: format!("rc{port}-"),
            stopper: std::thread::current().id(),
            lines: Vec::new(),
        });
        f();
        WATCH.lock().take().map(|w| w.lines).unwrap_or_default()
    }

    /// The lines captured so far by the current [`watch`].
    pub(super) fn so_far() -> Vec<Line> {
        WATCH
            .lock()
            .as_ref()
            .map(|w| w.lines.clone())
            .unwrap_or_default()
    }
}

/// A server that wants a token, and `n` POSTs to it with a wrong one, each
/// answered 401; how long they took, in whole seconds.
fn wrong_tokens(server: &regcenter::RegistryServer, n: u64) -> u64 {
    let addr = server.local_addr();
    let agent = agent();
    let started = Instant::now();
    for i in 0..n {
        let r = agent
            .post(format!("http://{addr}{P}/flood"))
            .header(
                "X-Myrpc-Server",
                format!("tcp@10.0.{}.{}:1", i / 250, i % 250),
            )
            .header("Authorization", "Bearer a-wrong-token")
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    started.elapsed().as_secs()
}

fn token_server() -> regcenter::RegistryServer {
    regcenter::RegistryServer::builder()
        .addr("127.0.0.1:0")
        .token("the-right-token")
        .threads(2)
        .start()
        .unwrap()
}

/// Of captured refusal lines, all of `regcenter::refused::token`: the
/// refusals written one line each, and the counts of the summaries.
fn token_refusals(lines: &[capture::Line]) -> (u64, Vec<u64>) {
    let token: Vec<&str> = lines
        .iter()
        .filter(|(t, _)| t == "regcenter::refused::token")
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(token.len(), lines.len(), "other kinds: {lines:#?}");
    let each = token
        .iter()
        .filter(|m| m.starts_with("refused POST"))
        .count() as u64;
    let summaries: Vec<u64> = token
        .iter()
        .filter(|m| m.contains("more refusals like it were not logged"))
        .map(|m| {
            m.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no count first in {m:?}"))
        })
        .collect();
    assert_eq!(
        each + summaries.len() as u64,
        token.len() as u64,
        "lines neither refusals nor summaries: {token:#?}"
    );
    (each, summaries)
}

#[test]
fn a_flood_of_refusals_to_an_embedded_server_is_summarised_by_the_server_itself() {
    const REFUSED: u64 = 2_000;
    let server = token_server();
    let mut secs = 0;
    let lines = capture::watch(server.local_addr().port(), || {
        secs = wrong_tokens(&server, REFUSED);
        // The count still held is written when the server stops.
        server.shutdown().unwrap();
    });
    let (each, summaries) = token_refusals(&lines);
    assert_eq!(
        each + summaries.iter().sum::<u64>(),
        REFUSED,
        "every refusal written or counted: {lines:#?}"
    );
    // One line a second and one summary per second: a handful in all.
    assert!(
        each <= secs + 2 && summaries.len() as u64 <= secs + 2,
        "{each} refusals and {} summaries written in {secs}s: {lines:#?}",
        summaries.len()
    );
}

#[test]
fn the_count_of_a_flood_that_ended_is_written_within_seconds_while_the_server_runs() {
    const REFUSED: u64 = 50;
    let server = token_server();
    capture::watch(server.local_addr().port(), || {
        wrong_tokens(&server, REFUSED);
        // No refusal follows, and the server goes on: the connection
        // guard's passes write the count once the window is over.
        crate::common::wait_until(
            "the refusals to be written or counted",
            Duration::from_secs(20),
            || {
                let (each, summaries) = token_refusals(&capture::so_far());
                each + summaries.iter().sum::<u64>() == REFUSED
            },
        );
        server.shutdown().unwrap();
    });
}
