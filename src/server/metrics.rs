//! `GET /metrics`: what the server counts, in Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::registry::Registry;

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
}

impl Metrics {
    pub(crate) fn new(workers: usize) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| Mutex::new(WorkerStats::default()))
                .collect(),
            counters: Counters::default(),
        }
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
            "regcenter_entries",
            "gauge",
            "Alive entries per service.",
        );
        for (service, n) in reg.service_sizes() {
            let _ = writeln!(out, "regcenter_entries{{service=\"{service}\"}} {n}");
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
                "Heartbeats of registered addresses.",
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
        out
    }
}
