//! `GET /metrics`: what the server counts, in Prometheus text format.
//!
//! Families an alert can rely on: `regcenter_entries{service}` for every
//! service a scrape saw in the last 10 minutes, at 0 once it emptied
//! ([`EMPTY_KEPT`]); `regcenter_build_info`; the process families of
//! Prometheus' client libraries, read from `/proc` (Linux); open
//! connections, parked watchers; the snapshot's last success and failures.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::registry::Registry;
use crate::registry::snapshot::Health;

/// How long a service that emptied out is still reported, at 0, before it
/// is dropped: long enough for an alert on `regcenter_entries < 1` to fire
/// and be seen; a restart forgets it at once.
pub(crate) const EMPTY_KEPT: Duration = Duration::from_secs(600);
/// Most emptied services remembered at once (the longest empty go first):
/// churning service names cannot grow the memory without bound.
const EMPTY_REMEMBERED: usize = 10_000;
/// The default service's `service` label: an empty label value reads as
/// no label in PromQL, and parentheses are not allowed in service names,
/// so it cannot be mistaken for one.
pub(crate) const DEFAULT_SERVICE_LABEL: &str = "(default)";

/// Upper bounds of the request latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// What the connection guard and the request threads did, counted.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) kicks: AtomicU64,
    pub(crate) closed_idle: AtomicU64,
    pub(crate) closed_slow: AtomicU64,
    pub(crate) closed_oversized: AtomicU64,
    pub(crate) closed_excess: AtomicU64,
    pub(crate) refused_bodies: AtomicU64,
    pub(crate) refused_framing: AtomicU64,
    pub(crate) closed_unread: AtomicU64,
    pub(crate) closed_pipelining: AtomicU64,
    pub(crate) closed_departed: AtomicU64,
    pub(crate) refused_watchers: AtomicU64,
    pub(crate) leaked_requests: AtomicU64,
    /// Connections the guard found open at its last pass.
    pub(crate) open_connections: AtomicU64,
    /// UDP renewal datagrams by result (`udp.rs`).
    pub(crate) udp_renewed: AtomicU64,
    pub(crate) udp_unknown: AtomicU64,
    pub(crate) udp_refused: AtomicU64,
    pub(crate) udp_malformed: AtomicU64,
}

#[derive(Default)]
struct WorkerStats {
    requests: HashMap<(&'static str, u16), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request counts and latencies, one slot per request thread so that
/// recording never contends; merged when scraped.
pub(crate) struct Metrics {
    workers: Vec<Mutex<WorkerStats>>,
    pub(crate) counters: Counters,
    /// Services scrapes saw, with when each was first seen empty.
    services: Mutex<HashMap<String, Option<Instant>>>,
    /// The snapshot writer's, when the server keeps one.
    snapshot: Option<Arc<Health>>,
}

/// The families of a front-end on etcd (`serve --etcd`).
pub(crate) fn render_etcd(out: &mut String, degraded: bool, revision: u64) {
    let _ = writeln!(
        out,
        "# HELP regcenter_etcd_up 1 while etcd answers this front-end, 0 while it serves its last state (degraded).\n\
         # TYPE regcenter_etcd_up gauge\nregcenter_etcd_up {}\n\
         # HELP regcenter_etcd_revision The etcd revision this front-end's listings reflect.\n\
         # TYPE regcenter_etcd_revision gauge\nregcenter_etcd_revision {revision}",
        u8::from(!degraded)
    );
}

impl Metrics {
    pub(crate) fn new(workers: usize, snapshot: Option<Arc<Health>>) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| Mutex::new(WorkerStats::default()))
                .collect(),
            counters: Counters::default(),
            services: Mutex::new(HashMap::new()),
            snapshot,
        }
    }

    /// Every service to report with its alive entries at `now`: those in
    /// `sizes`, and those seen before that emptied out less than
    /// [`EMPTY_KEPT`] ago, at 0. Sorted by name.
    fn entries_at(&self, sizes: Vec<(String, usize)>, now: Instant) -> Vec<(String, usize)> {
        let mut seen = self.services.lock();
        for entry in seen.values_mut() {
            entry.get_or_insert(now);
        }
        for (service, _) in &sizes {
            if let Some(empty_since) = seen.get_mut(service) {
                *empty_since = None;
            } else {
                seen.insert(service.clone(), None);
            }
        }
        seen.retain(|_, since| since.is_none_or(|t| now.saturating_duration_since(t) < EMPTY_KEPT));
        let empty = seen.len() - sizes.len();
        if empty > EMPTY_REMEMBERED {
            let mut oldest: Vec<(Instant, String)> = seen
                .iter()
                .filter_map(|(name, since)| since.map(|t| (t, name.clone())))
                .collect();
            oldest.sort_unstable();
            for (_, name) in oldest.into_iter().take(empty - EMPTY_REMEMBERED) {
                seen.remove(&name);
            }
        }
        let mut out = sizes;
        out.extend(
            seen.iter()
                .filter(|(_, since)| since.is_some())
                .map(|(name, _)| (name.clone(), 0)),
        );
        drop(seen);
        out.sort_unstable();
        out
    }

    pub(crate) fn record(&self, worker: usize, method: &'static str, status: u16, took: Duration) {
        // The pool grows past its first threads; those share slots.
        let Some(slot) = self.workers.get(worker % self.workers.len().max(1)) else {
            return;
        };
        let secs = took.as_secs_f64();
        let mut w = slot.lock();
        *w.requests.entry((method, status)).or_insert(0) += 1;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            w.buckets[i] += 1;
        }
        w.count += 1;
        w.sum += secs;
    }

    /// The Prometheus text exposition of everything the server counts.
    pub(crate) fn render(&self, reg: &Registry, parked: usize, rebuilds: u64) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "regcenter_build_info",
            "gauge",
            "Always 1, labelled with the version of regcenter serving.",
        );
        let _ = writeln!(
            out,
            "regcenter_build_info{{version=\"{}\"}} 1",
            label(env!("CARGO_PKG_VERSION"))
        );
        head(
            &mut out,
            "regcenter_entries",
            "gauge",
            "Alive entries per service; (default) is the default service. A service that emptied out reads 0 for 10 minutes, then is dropped.",
        );
        for (service, n) in self.entries_at(reg.service_sizes(), Instant::now()) {
            let name = if service.is_empty() {
                DEFAULT_SERVICE_LABEL
            } else {
                &service
            };
            let _ = writeln!(out, "regcenter_entries{{service=\"{}\"}} {n}", label(name));
        }
        let st = reg.stats();
        for (name, help, v) in [
            (
                "regcenter_registrations_total",
                "New addresses registered.",
                st.registrations,
            ),
            (
                "regcenter_renewals_total",
                "Heartbeats of registered addresses, over HTTP and UDP.",
                st.renewals,
            ),
            (
                "regcenter_deregistrations_total",
                "Addresses deregistered.",
                st.deregistrations,
            ),
            (
                "regcenter_expiries_total",
                "Addresses expired after their TTL.",
                st.expiries,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        head(
            &mut out,
            "regcenter_parked_watchers",
            "gauge",
            "Long-poll requests waiting for a change.",
        );
        let _ = writeln!(out, "regcenter_parked_watchers {parked}");
        head(
            &mut out,
            "regcenter_open_connections",
            "gauge",
            "Client connections open, as the connection guard last counted them (every 40 ms).",
        );
        let _ = writeln!(
            out,
            "regcenter_open_connections {}",
            self.counters.open_connections.load(Ordering::Relaxed)
        );
        if let Some(h) = &self.snapshot {
            head(
                &mut out,
                "regcenter_snapshot_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last snapshot written successfully.",
            );
            let ms = h.last_success_ms.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "regcenter_snapshot_last_success_timestamp_seconds {}.{:03}",
                ms / 1000,
                ms % 1000
            );
            head(
                &mut out,
                "regcenter_snapshot_failures_total",
                "counter",
                "Snapshot writes that failed.",
            );
            let _ = writeln!(
                out,
                "regcenter_snapshot_failures_total {}",
                h.failures.load(Ordering::Relaxed)
            );
        }

        let mut requests: HashMap<(&'static str, u16), u64> = HashMap::new();
        let (mut buckets, mut count, mut sum) = ([0u64; BUCKETS.len()], 0u64, 0f64);
        for slot in &self.workers {
            let w = slot.lock();
            for (k, v) in &w.requests {
                *requests.entry(*k).or_insert(0) += v;
            }
            for (b, v) in buckets.iter_mut().zip(w.buckets) {
                *b += v;
            }
            count += w.count;
            sum += w.sum;
        }
        head(
            &mut out,
            "regcenter_requests_total",
            "counter",
            "Requests answered by method and status.",
        );
        let mut keys: Vec<_> = requests.into_iter().collect();
        keys.sort_unstable();
        for ((method, status), v) in keys {
            let _ = writeln!(
                out,
                "regcenter_requests_total{{method=\"{method}\",status=\"{status}\"}} {v}"
            );
        }
        head(
            &mut out,
            "regcenter_request_duration_seconds",
            "histogram",
            "Time from taking a request to having answered it.",
        );
        let mut cumulative = 0;
        for (le, v) in BUCKETS.iter().zip(buckets) {
            cumulative += v;
            let _ = writeln!(
                out,
                "regcenter_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "regcenter_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "regcenter_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "regcenter_request_duration_seconds_count {count}");

        let c = &self.counters;
        head(
            &mut out,
            "regcenter_connections_closed_total",
            "counter",
            "Connections the guard closed, by reason.",
        );
        for (reason, v) in [
            ("idle", &c.closed_idle),
            ("slow", &c.closed_slow),
            ("oversized", &c.closed_oversized),
            ("excess", &c.closed_excess),
            ("unread_answer", &c.closed_unread),
            ("pipelining", &c.closed_pipelining),
            ("departed_watcher", &c.closed_departed),
        ] {
            let _ = writeln!(
                out,
                "regcenter_connections_closed_total{{reason=\"{reason}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        head(
            &mut out,
            "regcenter_udp_datagrams_total",
            "counter",
            "UDP renewal datagrams by result: renewed, unknown (no such entry), refused (a wrong tag or stamp), malformed (a wrong size or shape).",
        );
        for (result, v) in [
            ("renewed", &c.udp_renewed),
            ("unknown", &c.udp_unknown),
            ("refused", &c.udp_refused),
            ("malformed", &c.udp_malformed),
        ] {
            let _ = writeln!(
                out,
                "regcenter_udp_datagrams_total{{result=\"{result}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "regcenter_kicks_total",
                "Starved connections freed by a kick.",
                c.kicks.load(Ordering::Relaxed),
            ),
            (
                "regcenter_refused_bodies_total",
                "Requests refused for carrying a body.",
                c.refused_bodies.load(Ordering::Relaxed),
            ),
            (
                "regcenter_refused_framing_total",
                "Requests refused for ambiguous framing or bytes no header may hold.",
                c.refused_framing.load(Ordering::Relaxed),
            ),
            (
                "regcenter_refused_watchers_total",
                "Long-polls answered 503 because the most allowed were parked.",
                c.refused_watchers.load(Ordering::Relaxed),
            ),
            (
                "regcenter_leaked_requests_total",
                "Requests declaring a body over 1 MiB, left to tiny_http (a thread and two descriptors each) because dropping them could abort the process.",
                c.leaked_requests.load(Ordering::Relaxed),
            ),
            (
                "regcenter_rebuilds_total",
                "HTTP server rebuilds after accept failures.",
                rebuilds,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
        process::render(&mut out);
        out
    }
}

/// A label value as the text format writes it: `\`, `"` and line feeds
/// escaped. Service names cannot hold them; this keeps it so.
fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// The process families Prometheus' client libraries export
/// (`process_*`, as client_golang's process collector names and types
/// them), read from `/proc/self` at each scrape: a few small reads, no
/// state kept.
#[cfg(target_os = "linux")]
mod process {
    use std::fmt::Write as _;

    pub(super) fn render(out: &mut String) {
        // SAFETY: sysconf only reads a configuration value.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut family = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        // A family that cannot be read is left out rather than reported
        // wrong.
        if let Some(st) = stat()
            && ticks > 0
            && page > 0
        {
            let ticks = ticks as f64;
            family(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                ((st.utime + st.stime) as f64 / ticks).to_string(),
            );
            family(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                st.vsize.to_string(),
            );
            family(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                (st.rss_pages * page as u64).to_string(),
            );
            if let Some(boot) = boot_time() {
                family(
                    "process_start_time_seconds",
                    "gauge",
                    "Start time of the process since unix epoch in seconds.",
                    (boot as f64 + st.start_ticks as f64 / ticks).to_string(),
                );
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            family(
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                fds.count().to_string(),
            );
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            family(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                (lim.rlim_cur as f64).to_string(),
            );
        }
    }

    struct Stat {
        utime: u64,
        stime: u64,
        start_ticks: u64,
        vsize: u64,
        rss_pages: u64,
    }

    /// The fields of `/proc/self/stat` (proc(5)) we report. The command
    /// name (field 2) may hold spaces and parentheses, so fields are
    /// counted from the last `)`.
    fn stat() -> Option<Stat> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        // Field 3 (state) is the first here.
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let n = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: n(14)?,
            stime: n(15)?,
            start_ticks: n(22)?,
            vsize: n(23)?,
            rss_pages: n(24)?,
        })
    }

    /// The boot time, in seconds since the epoch (`btime` of `/proc/stat`).
    fn boot_time() -> Option<u64> {
        std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }
}

/// Elsewhere `/proc` is not there to read; the process families are left
/// out.
#[cfg(not(target_os = "linux"))]
mod process {
    pub(super) fn render(_: &mut String) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(v: &[(&str, usize)]) -> Vec<(String, usize)> {
        v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn an_emptied_service_reads_0_for_ten_minutes_then_is_dropped() {
        let m = Metrics::new(1, None);
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        assert_eq!(
            m.entries_at(sizes(&[("a", 2), ("b", 1)]), t0),
            sizes(&[("a", 2), ("b", 1)])
        );
        assert_eq!(
            m.entries_at(sizes(&[("b", 1)]), t0 + minute),
            sizes(&[("a", 0), ("b", 1)])
        );
        assert_eq!(
            m.entries_at(sizes(&[("b", 1)]), t0 + 10 * minute),
            sizes(&[("a", 0), ("b", 1)]),
            "ten minutes from when a scrape first saw it empty"
        );
        assert_eq!(
            m.entries_at(sizes(&[("b", 1)]), t0 + 11 * minute),
            sizes(&[("b", 1)])
        );
        // Back, then empty again: the ten minutes start over.
        assert_eq!(
            m.entries_at(sizes(&[("a", 1), ("b", 1)]), t0 + 12 * minute),
            sizes(&[("a", 1), ("b", 1)])
        );
        assert_eq!(
            m.entries_at(sizes(&[]), t0 + 13 * minute),
            sizes(&[("a", 0), ("b", 0)])
        );
        assert_eq!(m.entries_at(sizes(&[]), t0 + 30 * minute), sizes(&[]));
    }

    #[test]
    fn emptied_services_remembered_are_bounded() {
        let m = Metrics::new(1, None);
        let t0 = Instant::now();
        let many: Vec<(String, usize)> = (0..EMPTY_REMEMBERED + 5)
            .map(|i| (format!("s{i:05}"), 1))
            .collect();
        m.entries_at(many, t0);
        m.entries_at(sizes(&[("s00000", 1)]), t0 + Duration::from_secs(1));
        let out = m.entries_at(Vec::new(), t0 + Duration::from_secs(2));
        assert_eq!(out.len(), EMPTY_REMEMBERED);
        assert_eq!(
            out[0],
            ("s00000".to_string(), 0),
            "the latest to empty stays"
        );
        assert_eq!(out[1].0, "s00006", "the longest empty went first");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("arith"), "arith");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
