//! `RegistryDiscovery`: the list of servers fetched from a registry (or
//! from etcd, feature `etcd`), kept fresh by a period or a long-poll, and
//! served stale while the source cannot be reached.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::outlier::DEFAULT_EJECT_AFTER;
use super::{Discovery, Instance, Picker, SelectMode, validate_all};
use crate::client::{self, CallOptions, DEFAULT_CALL_TIMEOUT, Reply, Verb};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::protocol::{
    HEADER_INDEX, HEADER_RECOVERING, HEADER_SERVERS, Status, encode_meta, service_url,
    split_servers,
};
use crate::rand::jitter;

/// Default time a fetched list is used before the next fetch.
pub const DEFAULT_REFRESH_PERIOD: Duration = Duration::from_secs(10);
/// First wait before retrying a failed fetch; doubled up to the period.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between two watch attempts while the registry is down.
const MAX_WATCH_RETRY: Duration = Duration::from_secs(5);
/// How long a registry that restarted without saying so is taken to be
/// recovering when the entries' TTL is unknown: the seed's default TTL.
const DEFAULT_HOLD: Duration = Duration::from_secs(5);

/// Builds a [`RegistryDiscovery`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RegistryDiscoveryBuilder {
    registries: Vec<String>,
    service: String,
    period: Duration,
    timeout: Duration,
    watch: bool,
    wait: Duration,
    token: Option<String>,
    filters: Vec<(String, String)>,
    prefer: Vec<(String, String)>,
    eject_after: u32,
    #[cfg(feature = "etcd")]
    etcd: Option<String>,
    #[cfg(feature = "tls")]
    ca_file: Option<std::path::PathBuf>,
}

impl RegistryDiscoveryBuilder {
    /// Trusts only the certificate authorities in this PEM file for
    /// `https://` registries or etcd endpoints (a private CA), instead of
    /// the public roots. Read at [`build`](RegistryDiscoveryBuilder::build).
    /// Defaults to the public roots.
    #[cfg(feature = "tls")]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Reads the servers from etcd instead of a registry: the keys under
    /// `prefix/service/` (`prefix` defaults to `/regcenter`), and in watch
    /// mode etcd's watch. Everything else behaves the same.
    #[cfg(feature = "etcd")]
    pub fn etcd_prefix(mut self, prefix: &str) -> Self {
        self.etcd = Some(prefix.to_string());
        self
    }

    /// The service to discover. Defaults to the default service.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Another registry holding the same servers, as on
    /// [`HeartbeatBuilder::also`](crate::HeartbeatBuilder::also): a
    /// discovery reads from one registry at a time and tries the others in
    /// turn when it cannot be reached (a heartbeat registers at every one).
    /// Defaults to none.
    pub fn also(mut self, registry_url: &str) -> Self {
        self.registries.push(registry_url.to_string());
        self
    }

    /// How long a fetched list is used before the next fetch. Defaults to
    /// 10 s, as in the seed.
    pub fn refresh_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Bound of each phase of each call to the registry. Defaults to 2 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The registry's bearer token, for a registry that protects reads.
    /// Defaults to none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Keeps a long-poll open from a background thread, so a change reaches
    /// the list within milliseconds instead of at the next refresh. Defaults
    /// to off.
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// How long one long-poll waits for a change before it is renewed.
    /// Defaults to 30 s.
    pub fn watch_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Discovers only the instances whose metadata has `key` = `value`;
    /// called again, adds a condition that must hold as well.
    ///
    /// The conditions go to the registry as `meta.KEY=VALUE` query
    /// parameters (percent-encoded) on every fetch and long-poll, so a
    /// registry that filters sends only what matches and wakes a watch only
    /// when the filtered list changes. They are also applied to every
    /// answer, so a registry that ignores them (an older one) is filtered
    /// all the same; a registry that sends no metadata at all (the seed's)
    /// then lists nothing that matches. Lists set by hand with
    /// [`update`](Discovery::update) are not filtered. Defaults to none.
    ///
    /// ```
    /// use regcenter::{Discovery, PutOptions, RegistryDiscovery, RegistryServer};
    ///
    /// let server = RegistryServer::start_local()?;
    /// let reg = server.registry();
    /// reg.put_with("arith", "tcp@127.0.0.1:7001", &PutOptions::new().meta("zone", "eu"))?;
    /// reg.put_with("arith", "tcp@127.0.0.1:7002", &PutOptions::new().meta("zone", "us"))?;
    /// let d = RegistryDiscovery::builder(server.url())
    ///     .service("arith")
    ///     .filter("zone", "eu")
    ///     .build()?;
    /// assert_eq!(d.get_all()?, ["tcp@127.0.0.1:7001"]);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.filters.push((key.into(), value.into()));
        self
    }

    /// Sends picks to the instances whose metadata has `key` = `value`
    /// (such as the caller's own zone) while any of them takes work (up,
    /// not ejected), and to the others only when none does; called again,
    /// adds a condition that preferred instances must meet as well.
    ///
    /// It holds for every [`SelectMode`] and needs no second fetch: the
    /// whole list is fetched, and the preferred part chosen from it when
    /// it changes. [`get_all`](Discovery::get_all) and
    /// [`instances`](Discovery::instances) still list every instance.
    /// Defaults to none.
    ///
    /// ```
    /// use regcenter::{Discovery, PutOptions, RegistryDiscovery, RegistryServer, SelectMode};
    ///
    /// let server = RegistryServer::start_local()?;
    /// let reg = server.registry();
    /// reg.put_with("arith", "tcp@127.0.0.1:7001", &PutOptions::new().meta("zone", "eu"))?;
    /// reg.put_with("arith", "tcp@127.0.0.1:7002", &PutOptions::new().meta("zone", "us"))?;
    /// let d = RegistryDiscovery::builder(server.url())
    ///     .service("arith")
    ///     .prefer("zone", "eu")
    ///     .build()?;
    /// for _ in 0..4 {
    ///     assert_eq!(d.get(SelectMode::RoundRobin)?, "tcp@127.0.0.1:7001");
    /// }
    /// assert_eq!(d.get_all()?.len(), 2);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn prefer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.prefer.push((key.into(), value.into()));
        self
    }

    /// How many failures in a row, reported with
    /// [`RegistryDiscovery::report_failure`], eject an instance from picks
    /// for a while; 0 turns ejection off. Defaults to 3.
    ///
    /// ```
    /// use regcenter::RegistryDiscovery;
    ///
    /// let d = RegistryDiscovery::builder("http://127.0.0.1:9999/myRPC/registry")
    ///     .eject_after(5)
    ///     .build()?;
    /// # drop(d);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn eject_after(mut self, failures: u32) -> Self {
        self.eject_after = failures;
        self
    }

    /// Builds the discovery; nothing is fetched until it is first used (in
    /// watch mode, the watching thread starts fetching at once).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`], [`Error::InvalidConfig`] (a registry URL
    /// that does not start with `http://` or `https://`, zero timeout or
    /// wait, a filter or preference with an empty key), [`Error::Io`] when
    /// the watch thread cannot be spawned.
    pub fn build(self) -> Result<RegistryDiscovery> {
        #[cfg(feature = "tls")]
        let trust = client::Trust::from_ca_file(self.ca_file.as_deref())?;
        #[cfg(not(feature = "tls"))]
        let trust = client::Trust::default();
        #[cfg(feature = "etcd")]
        let from_registry = self.etcd.is_none();
        #[cfg(not(feature = "etcd"))]
        let from_registry = true;
        if from_registry {
            for r in &self.registries {
                check_scheme(r)?;
            }
        }
        if self.filters.iter().any(|(k, _)| k.is_empty()) {
            return Err(Error::config(
                "filter",
                "a key is empty; e.g. filter(\"zone\", \"eu\")",
            ));
        }
        if self.prefer.iter().any(|(k, _)| k.is_empty()) {
            return Err(Error::config(
                "prefer",
                "a key is empty; e.g. prefer(\"zone\", \"eu\")",
            ));
        }
        let query: String = self
            .filters
            .iter()
            .map(|(k, v)| format!("&{}", encode_meta(&[(format!("meta.{k}"), v.clone())])))
            .collect();
        #[cfg(feature = "etcd")]
        let etcd = match &self.etcd {
            Some(prefix) => Some(crate::etcd::EtcdSource::new(
                &self.registries,
                prefix,
                &self.service,
                self.timeout,
                &trust,
            )?),
            None => None,
        };
        #[cfg(feature = "etcd")]
        let urls = match &etcd {
            Some(e) => vec![e.describe()],
            None => self
                .registries
                .iter()
                .map(|r| service_url(r, &self.service))
                .collect::<Result<Vec<_>>>()?,
        };
        #[cfg(not(feature = "etcd"))]
        let urls = self
            .registries
            .iter()
            .map(|r| service_url(r, &self.service))
            .collect::<Result<Vec<_>>>()?;
        if self.timeout.is_zero() {
            return Err(Error::config("timeout", "must be above zero"));
        }
        if self.wait.is_zero() {
            return Err(Error::config("watch_wait", "must be above zero"));
        }
        if let Some(t) = &self.token {
            client::validate_token(t)?;
        }
        for url in &urls {
            client::check_scheme("registry URL", url)?;
        }
        let shared = Arc::new(Shared {
            urls,
            current: AtomicUsize::new(0),
            agent: client::agent_trusting(self.timeout, &trust),
            watch_agent: client::agent_trusting(self.timeout, &trust),
            period: self.period,
            wait: self.wait,
            auth: client::bearer(self.token.as_deref()),
            query,
            filters: self.filters,
            #[cfg(feature = "etcd")]
            etcd,
            state: Mutex::new(State {
                picker: Picker::with(
                    self.prefer,
                    self.eject_after,
                    Arc::new(SystemClock),
                    Vec::new(),
                ),
                fetched: None,
                next_attempt: None,
                retry: FIRST_RETRY,
                failing: false,
                last_error: None,
                index: None,
                source: None,
                ttl_hint: None,
                latest: Vec::new(),
                carried: Vec::new(),
                relisted: HashSet::new(),
                recovery: Recovery::Off,
            }),
            fetching: Mutex::new(()),
            stop: AtomicBool::new(false),
            stop_lock: Mutex::new(()),
            stop_wake: Condvar::new(),
            fetched: Condvar::new(),
        });
        let watcher = if self.watch {
            let s = shared.clone();
            Some(
                thread::Builder::new()
                    .name("regcenter-watch".into())
                    .spawn(move || s.watch_loop())
                    .map_err(|e| Error::io("spawn the discovery watch thread", e))?,
            )
        } else {
            None
        };
        Ok(RegistryDiscovery { shared, watcher })
    }
}

/// A discovery that asks a registry for the alive servers, as the seed's
/// `GeeRegistryDiscovery`, and reuses the answer for the refresh period.
///
/// - One fetch at a time: while one thread fetches, the others pick from the
///   current list (the very first fetch makes them wait).
/// - Stale on error: when a fetch fails the last good list is kept and
///   served (logged once per outage), and the fetch is retried with jittered
///   backoff; [`age`](RegistryDiscovery::age) says how stale it is. `get`
///   fails while no list was ever fetched (with the error of the last
///   attempt, such as [`Error::Unreachable`], on every call until one
///   succeeds), or when no instance takes work ([`Error::NoServers`]).
/// - Fallbacks: registries added with
///   [`also`](RegistryDiscoveryBuilder::also) are tried in turn.
/// - No pile-up after a registry restart: while the registry says it is
///   recovering (it started without a snapshot and servers may still be
///   re-registering: `X-Myrpc-Recovering: true`, or `"recovering": true`
///   in JSON), the list in use is the registry's list together with the
///   entries of the last list from before the restart, so that the first
///   servers to re-register do not take every client's load. An old entry
///   is dropped when the restarted registry has listed it and then stops
///   listing it (it was deregistered or expired there: a DELETE itself is
///   not visible to clients), or when recovery ends without it. A registry
///   that says nothing of recovery (an older one) is taken to be recovering
///   for one TTL (the longest time left of the last list's entries, 5 s
///   when unknown) after its index went backwards: an empty answer then
///   does not wipe the list (the empty-list guard of earlier versions).
/// - Filters, preference and failure feedback:
///   [`filter`](RegistryDiscoveryBuilder::filter),
///   [`prefer`](RegistryDiscoveryBuilder::prefer),
///   [`report_failure`](RegistryDiscovery::report_failure).
/// - Watch mode: a thread keeps a long-poll open; stopping or dropping the
///   discovery ends it at once. After the first listing, each long-poll
///   asks for the changes only (`delta=1`, without filters) and applies
///   them to the list it has; an answer that is a listing (a registry
///   that keeps no deltas, or not that far back) replaces it as before,
///   and a delta that does not start from its list or does not apply
///   cleanly is set aside for a fresh full listing.
///
/// It asks for `?format=json` (addresses with weights, metadata and
/// status; a missing status reads as up, a missing weight as 1); an answer
/// without `X-Myrpc-Index` comes from a registry that speaks only the
/// seed's protocol (the Go original) and is read from `X-Myrpc-Servers`
/// instead.
pub struct RegistryDiscovery {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
}

struct Shared {
    urls: Vec<String>,
    /// The registry that answered last.
    current: AtomicUsize,
    agent: ureq::Agent,
    /// Its own agent: stopping shuts it down to interrupt a long-poll.
    watch_agent: ureq::Agent,
    period: Duration,
    wait: Duration,
    auth: Option<(&'static str, String)>,
    /// The filters as query parameters: `&meta.k=v…`, encoded once.
    query: String,
    /// The filters, applied to every answer as well.
    filters: Vec<(String, String)>,
    #[cfg(feature = "etcd")]
    etcd: Option<crate::etcd::EtcdSource>,
    state: Mutex<State>,
    /// Held while fetching: one fetch at a time.
    fetching: Mutex<()>,
    stop: AtomicBool,
    stop_lock: Mutex<()>,
    stop_wake: Condvar,
    /// Notified (with `state`) after every successful fetch.
    fetched: Condvar,
}

struct State {
    picker: Picker,
    /// When the registry last confirmed the list (any successful answer,
    /// an unchanged long-poll answer included).
    fetched: Option<Instant>,
    next_attempt: Option<Instant>,
    retry: Duration,
    failing: bool,
    /// The last fetch's error while no fetch ever succeeded, answered by
    /// every pick until one does (its cause shared, see [`again`]).
    last_error: Option<Error>,
    /// The registry's index at the last answer.
    index: Option<u64>,
    /// Which of `urls` gave that answer: a delta is only asked of it, and
    /// only applied from it (indexes of two registries are unrelated).
    source: Option<usize>,
    /// The longest remaining TTL seen in the last non-empty answer.
    ttl_hint: Option<Duration>,
    /// The registry's last list, filtered.
    latest: Vec<Instance>,
    /// While it recovers: the entries from before its restart that it has
    /// not listed since, served beside `latest`.
    carried: Vec<Instance>,
    /// While it recovers: every address it has listed since its restart.
    relisted: HashSet<String>,
    recovery: Recovery,
}

/// Whether the registry is refilling after a restart that lost its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    Off,
    /// The registry says so, and the discovery believes it until it says
    /// otherwise.
    Reported,
    /// The registry said nothing, but its index went backwards: taken to
    /// be recovering until then.
    Inferred {
        until: Instant,
    },
}

impl State {
    /// Whether a fetch is due. The coarse clock (a few ms of resolution,
    /// 4 ns to read): every pick asks.
    fn due(&self) -> bool {
        self.next_attempt.is_none_or(|t| SystemClock.now() >= t)
    }

    /// Ends a recovery that was only inferred once its time has passed,
    /// even when no fetch is due (a watch may be parked for long).
    fn release_hold(&mut self) {
        if let Recovery::Inferred { until } = self.recovery
            && SystemClock.now() >= until
        {
            self.end_recovery();
        }
    }

    fn end_recovery(&mut self) {
        if self.recovery != Recovery::Off {
            log::info!("discovery: the registry has recovered; serving its list alone");
        }
        self.recovery = Recovery::Off;
        self.carried.clear();
        self.relisted.clear();
        let list = self.latest.clone();
        self.picker.set(list);
    }

    /// The error of the last attempt while none ever succeeded.
    fn never_fetched(&self) -> Result<()> {
        match (&self.fetched, &self.last_error) {
            (None, Some(e)) => Err(again(e)),
            _ => Ok(()),
        }
    }
}

/// A registry's answer: a listing, or what changed since an index (an
/// answer to `delta=1` that says `"delta": true`).
enum Answer {
    Full(Fetched),
    Delta(Patch),
}

/// What changed in a listing between two indexes.
struct Patch {
    since: u64,
    index: u64,
    recovering: Option<bool>,
    added: Vec<Instance>,
    changed: Vec<Instance>,
    removed: Vec<String>,
}

impl Patch {
    /// `list` (sorted by address) with the changes applied, or `None`
    /// when they do not apply cleanly: an address added that is there
    /// already, or changed or removed that is not. The list then differs
    /// from the registry's at `since`, and a full listing is fetched.
    fn apply_to(&self, list: &[Instance]) -> Option<Vec<Instance>> {
        if !list.windows(2).all(|w| w[0].addr() < w[1].addr()) {
            return None;
        }
        let mut out = list.to_vec();
        let find = |out: &[Instance], addr: &str| out.binary_search_by(|i| i.addr().cmp(addr));
        for addr in &self.removed {
            let at = find(&out, addr).ok()?;
            out.remove(at);
        }
        for i in &self.changed {
            let at = find(&out, i.addr()).ok()?;
            out[at] = i.clone();
        }
        for i in &self.added {
            let at = find(&out, i.addr()).err()?;
            out.insert(at, i.clone());
        }
        Some(out)
    }
}

/// One answer: the instances, the index if any, and whether the registry
/// says it is recovering (`None`: it does not say).
pub(crate) struct Fetched {
    pub(crate) instances: Vec<Instance>,
    pub(crate) index: Option<u64>,
    pub(crate) recovering: Option<bool>,
}

impl RegistryDiscovery {
    /// A discovery of the default service with the defaults.
    ///
    /// # Errors
    ///
    /// As [`RegistryDiscoveryBuilder::build`].
    pub fn new(registry_url: &str) -> Result<RegistryDiscovery> {
        RegistryDiscovery::builder(registry_url).build()
    }

    /// A builder for `registry_url`, e.g. `http://127.0.0.1:9999/myRPC/registry`.
    pub fn builder(registry_url: &str) -> RegistryDiscoveryBuilder {
        RegistryDiscoveryBuilder {
            registries: vec![registry_url.to_string()],
            service: String::new(),
            period: DEFAULT_REFRESH_PERIOD,
            timeout: DEFAULT_CALL_TIMEOUT,
            watch: false,
            wait: Duration::from_secs(30),
            token: None,
            filters: Vec::new(),
            prefer: Vec::new(),
            eject_after: DEFAULT_EJECT_AFTER,
            #[cfg(feature = "etcd")]
            etcd: None,
            #[cfg(feature = "tls")]
            ca_file: None,
        }
    }

    /// A builder for discovery from etcd at `endpoints` (e.g.
    /// `http://127.0.0.1:2379`, tried in turn), keys under `/regcenter`.
    #[cfg(feature = "etcd")]
    pub fn etcd(endpoints: &[&str]) -> RegistryDiscoveryBuilder {
        let mut b = RegistryDiscovery::builder(endpoints.first().copied().unwrap_or(""));
        b.registries = endpoints.iter().map(|e| e.to_string()).collect();
        b.etcd_prefix(crate::etcd::DEFAULT_PREFIX)
    }

    /// The URL of the service's listing at the registry in use.
    pub fn url(&self) -> &str {
        &self.shared.urls[self.shared.current.load(Ordering::Relaxed) % self.shared.urls.len()]
    }

    /// Time since the registry last confirmed the list, `None` before the
    /// first success: how stale the servers `get` picks from may be. Any
    /// answer confirms it, in watch mode a long-poll that ends unchanged
    /// too; a list set by [`update`](Discovery::update) counts as fresh.
    pub fn age(&self) -> Option<Duration> {
        self.shared.state.lock().fetched.map(|t| t.elapsed())
    }

    /// Reports that a call to `addr` failed. After
    /// [`eject_after`](RegistryDiscoveryBuilder::eject_after) failures in a
    /// row (3 by default) picks skip it for a while: 1 s, then twice as
    /// long at each ejection that follows, at most 30 s.
    ///
    /// Never more than half of the listed instances are out at once (as
    /// Envoy's `max_ejection_percent` 50), so one instance alone is never
    /// ejected. Failures reported while it is out do not count (calls that
    /// started before). A success, or the instance registering again (it
    /// leaves the list and comes back, or comes back with another weight,
    /// metadata or status), clears its record and ends an ejection.
    /// An address not in the list is ignored.
    /// [`Instance::is_ejected`] shows who is out.
    ///
    /// ```
    /// use regcenter::{Discovery, RegistryDiscovery, RegistryServer, SelectMode};
    ///
    /// let server = RegistryServer::start_local()?;
    /// for a in ["tcp@127.0.0.1:7001", "tcp@127.0.0.1:7002"] {
    ///     server.registry().put("", a)?;
    /// }
    /// let d = RegistryDiscovery::new(server.url())?;
    /// let addr = d.get(SelectMode::RoundRobin)?;
    /// for _ in 0..3 {
    ///     d.report_failure(&addr); // three calls to it failed
    /// }
    /// let out: Vec<String> = d.instances()?.iter()
    ///     .filter(|i| i.is_ejected())
    ///     .map(|i| i.addr().to_string())
    ///     .collect();
    /// assert_eq!(out, [addr.clone()]);
    /// assert_ne!(d.get(SelectMode::RoundRobin)?, addr);
    /// d.report_success(&addr);
    /// assert_eq!(d.get_all()?.len(), 2);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn report_failure(&self, addr: &str) {
        self.shared.state.lock().picker.report_failure(addr);
    }

    /// Reports that a call to `addr` succeeded: its failures in a row and
    /// its back-off start again, and an ejection in force ends. See
    /// [`report_failure`](RegistryDiscovery::report_failure).
    ///
    /// ```
    /// use regcenter::{Discovery, RegistryDiscovery, RegistryServer};
    ///
    /// let server = RegistryServer::start_local()?;
    /// server.registry().put("", "tcp@127.0.0.1:7001")?;
    /// let d = RegistryDiscovery::new(server.url())?;
    /// d.report_success("tcp@127.0.0.1:7001");
    /// assert!(!d.instances()?[0].is_ejected());
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn report_success(&self, addr: &str) {
        self.shared.state.lock().picker.report_success(addr);
    }

    /// The registry index of the list in use, if the registry reports one.
    pub fn index(&self) -> Option<u64> {
        self.shared.state.lock().index
    }

    /// Waits until the list's index differs from `seen`, at most `timeout`;
    /// returns the index then in force (`seen` on timeout). With
    /// [`watch`](RegistryDiscoveryBuilder::watch) on, this is how a program
    /// reacts to changes as they arrive.
    pub fn wait_for_change(&self, seen: Option<u64>, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        while st.index == seen {
            if self
                .shared
                .fetched
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                break;
            }
        }
        st.index
    }

    /// Ends the watch thread, if any, and waits for it.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when the thread had panicked.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(t) = self.watcher.take() else {
            return Ok(());
        };
        {
            let _g = self.shared.stop_lock.lock();
            self.shared.stop.store(true, Ordering::Release);
            self.shared.stop_wake.notify_all();
        }
        // Interrupts a long-poll blocked in its read at once, and the
        // watcher's plain fetch (on the other agent) from a registry that
        // stalls. Neither agent is used again: this handle is going away.
        self.shared.watch_agent.clone().shutdown();
        self.shared.agent.clone().shutdown();
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.shared.etcd {
            etcd.interrupt();
        }
        t.join().map_err(|_| Error::Stopped {
            what: "discovery watch thread (it panicked)".into(),
        })
    }

    /// Fetches when the list is due; see the type's docs for who fetches
    /// and what happens on failure.
    fn ensure_fresh(&self) -> Result<()> {
        let sh = &self.shared;
        let due = State::due;
        let have_list = {
            let st = sh.state.lock();
            if !due(&st) {
                return Ok(());
            }
            st.fetched.is_some()
        };
        let _guard = if have_list {
            match sh.fetching.try_lock() {
                Some(g) => g,
                None => return Ok(()), // another thread fetches; use the list
            }
        } else {
            sh.fetching.lock()
        };
        // Another thread may have fetched while this one waited.
        let have_list = {
            let st = sh.state.lock();
            if st.fetched.is_some() && !due(&st) {
                return Ok(());
            }
            st.fetched.is_some()
        };
        match sh.fetch_and_store(None, None) {
            Err(_) if have_list => Ok(()),
            other => other,
        }
    }

    /// The state to pick from: fetched first when due, the last error
    /// while no list was ever fetched, an inferred recovery ended once its
    /// time has passed.
    fn pickable(&self) -> Result<parking_lot::MutexGuard<'_, State>> {
        // One lock for the usual pick, when no fetch is due: picks from
        // several threads contend for it.
        let mut st = self.shared.state.lock();
        if st.due() {
            drop(st);
            self.ensure_fresh()?;
            st = self.shared.state.lock();
        }
        st.never_fetched()?;
        st.release_hold();
        Ok(st)
    }
}

impl Shared {
    /// One GET to each registry in turn, starting with the one that
    /// answered last, until one answers; `watch`: a long-poll from `index`,
    /// asking the registry `delta_from` (an index into `urls`) for the
    /// changes only. Returns the answer and which registry gave it.
    fn fetch(&self, watch: Option<u64>, delta_from: Option<usize>) -> Result<(Answer, usize)> {
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.etcd {
            return etcd.fetch(watch, self.wait).map(|f| (Answer::Full(f), 0));
        }
        let n = self.urls.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for k in 0..n {
            let i = (first + k) % n;
            let url = &self.urls[i];
            let auth: Vec<(&str, &str)> = self.auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let query = &self.query;
            let result = match watch {
                None => client::call(
                    &self.agent,
                    Verb::Get,
                    &format!("{url}?format=json{query}"),
                    &auth,
                ),
                Some(index) => client::long_poll(
                    &self.watch_agent,
                    &format!(
                        "{url}?format=json{query}&index={index}&wait={}ms{}",
                        self.wait.as_millis(),
                        if delta_from == Some(i) {
                            "&delta=1"
                        } else {
                            ""
                        }
                    ),
                    &auth,
                    self.wait + self.wait / 16 + Duration::from_secs(2),
                ),
            };
            match result.and_then(|r| r.ok(url)).and_then(|r| parse(url, &r)) {
                Ok(f) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((f, i));
                }
                Err(e) if e.is_transient() || matches!(e, Error::BadResponse { .. }) => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
        }
        Err(last_err.expect("at least one registry was tried"))
    }

    /// Fetches and stores; the caller holds `fetching` (or is the watcher).
    /// A delta is applied to the last list when it starts from that list
    /// (same registry, same index) and applies cleanly; otherwise the full
    /// listing is fetched at once.
    fn fetch_and_store(&self, watch: Option<u64>, delta_from: Option<usize>) -> Result<()> {
        let result = self.fetch(watch, delta_from);
        let mut st = self.state.lock();
        let result = match result {
            Ok((Answer::Delta(p), i)) => {
                let list = (st.source == Some(i) && st.index == Some(p.since))
                    .then(|| p.apply_to(&st.latest))
                    .flatten();
                match list {
                    Some(instances) => Ok((
                        Fetched {
                            instances,
                            index: Some(p.index),
                            recovering: p.recovering,
                        },
                        i,
                    )),
                    None => {
                        log::debug!(
                            "discovery: a delta since index {} does not fit the list at {:?}; \
                             fetching the full listing",
                            p.since,
                            st.index
                        );
                        drop(st);
                        let full = self.fetch(None, None);
                        st = self.state.lock();
                        full.and_then(|(a, i)| match a {
                            Answer::Full(f) => Ok((f, i)),
                            Answer::Delta(_) => Err(Error::BadResponse {
                                url: self.urls[i].clone(),
                                reason: "a listing asked without delta=1 came as a delta".into(),
                            }),
                        })
                    }
                }
            }
            Ok((Answer::Full(f), i)) => Ok((f, i)),
            Err(e) => Err(e),
        };
        let now = Instant::now();
        match result {
            Ok((mut f, source)) => {
                st.source = Some(source);
                f.instances.retain(|i| i.matches(&self.filters));
                if st.failing {
                    log::info!(
                        "discovery: {} answers again",
                        self.urls[self.current.load(Ordering::Relaxed)]
                    );
                }
                apply(&mut st, f, now);
                st.fetched = Some(now);
                st.next_attempt = Some(now + self.period);
                st.retry = FIRST_RETRY;
                st.failing = false;
                st.last_error = None;
                self.fetched.notify_all();
                Ok(())
            }
            Err(e) => {
                if !st.failing && st.fetched.is_some() {
                    log::warn!("discovery: {e}; serving the last list until a registry answers");
                }
                st.failing = true;
                st.next_attempt = Some(now + jitter(st.retry, 0.5));
                st.retry = (st.retry * 2).min(self.period.max(FIRST_RETRY));
                let e = share(e);
                if st.fetched.is_none() {
                    st.last_error = Some(again(&e));
                }
                Err(e)
            }
        }
    }

    fn watch_loop(&self) {
        let mut retry = FIRST_RETRY;
        while !self.stop.load(Ordering::Acquire) {
            // Deltas are asked of the registry that gave the list, and
            // without filters only: a registry answers filtered deltas in
            // full, and the list kept here is filtered.
            let (index, delta_from) = {
                let st = self.state.lock();
                let unfiltered = self.filters.is_empty();
                (st.index, st.source.filter(|_| unfiltered))
            };
            // A plain fetch counts as the one fetch at a time; a long-poll
            // does not hold that lock, or an explicit refresh would wait
            // for the poll's whole wait.
            let result = match index {
                None => {
                    let _g = self.fetching.lock();
                    self.fetch_and_store(None, None)
                }
                Some(_) => self.fetch_and_store(index, delta_from),
            };
            match result {
                Ok(()) => retry = FIRST_RETRY,
                Err(_) if self.stop.load(Ordering::Acquire) => return,
                Err(_) => {
                    // Jittered, so that a registry restart is not met by
                    // every watcher at the same instant.
                    let wait = jitter(retry, 0.5);
                    retry = (retry * 2).min(MAX_WATCH_RETRY);
                    let mut g = self.stop_lock.lock();
                    if !self.stop.load(Ordering::Acquire) {
                        self.stop_wake.wait_for(&mut g, wait);
                    }
                }
            }
        }
    }
}

/// Stores an answer. While the registry recovers from a restart that lost
/// its table, the entries from before it that it has not listed again are
/// kept beside its list (see the type's docs).
fn apply(st: &mut State, f: Fetched, now: Instant) {
    st.release_hold();
    let went_back = matches!((f.index, st.index), (Some(new), Some(old)) if new < old);
    st.index = f.index;
    let recovering = match f.recovering {
        Some(said) => said,
        // A registry that does not say: a smaller index means it restarted
        // and lost its table. One that said so and no longer does (the
        // header is only sent while true) has recovered.
        None => went_back || matches!(st.recovery, Recovery::Inferred { .. }),
    };
    if !recovering {
        if let Some(ttl) = ttl_of(&f.instances) {
            st.ttl_hint = Some(ttl);
        }
        st.latest = f.instances;
        st.end_recovery();
        return;
    }
    // A restart while recovering (a registry restarted again before its
    // recovery ended, or one that reported recovery from its start) carries
    // what is served now, which already holds what was carried before.
    if st.recovery == Recovery::Off || went_back {
        st.carried = st.picker.list.clone();
        st.relisted.clear();
        st.recovery = match f.recovering {
            Some(_) => Recovery::Reported,
            None => Recovery::Inferred {
                until: now + st.ttl_hint.unwrap_or(DEFAULT_HOLD),
            },
        };
        // A first answer has nothing to carry: a registry that started
        // a moment ago, not one that lost a table this client saw.
        if !st.carried.is_empty() {
            log::warn!(
                "discovery: the registry restarted without its table; serving the {} servers \
                 it listed before beside its new list while it recovers",
                st.carried.len()
            );
        }
    } else if f.recovering == Some(true) {
        st.recovery = Recovery::Reported;
    }
    st.relisted
        .extend(f.instances.iter().map(|i| i.addr().to_string()));
    let relisted = &st.relisted;
    st.carried.retain(|c| !relisted.contains(c.addr()));
    st.latest = f.instances;
    let mut list: Vec<Instance> = st.latest.iter().chain(&st.carried).cloned().collect();
    list.sort_by(|a, b| a.addr().cmp(b.addr()));
    st.picker.set(list);
}

/// The longest time left of the listed entries.
fn ttl_of(list: &[Instance]) -> Option<Duration> {
    list.iter().filter_map(Instance::expires_in).max()
}

/// Whether a registry URL names its scheme: without it, ureq would fail at
/// the first call with an error that reads as the registry's.
fn check_scheme(url: &str) -> Result<()> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    Err(Error::config(
        "registry URL",
        format!(
            "{url:?} does not start with http:// or https://; write e.g. http://127.0.0.1:9999/myRPC/registry"
        ),
    ))
}

/// A transport error's cause behind an `Arc`, so the error can be answered
/// again by every pick while no fetch succeeds.
#[derive(Debug, Clone)]
struct SharedCause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `e` with its cause made shareable (see [`again`]).
fn share(e: Error) -> Error {
    match e {
        Error::Unreachable { url, source } if !source.is::<SharedCause>() => Error::Unreachable {
            url,
            source: Box::new(SharedCause(Arc::from(source))),
        },
        other => other,
    }
}

/// A copy of an error a fetch returned, passed through [`share`].
fn again(e: &Error) -> Error {
    match e {
        Error::Unreachable { url, source } => Error::Unreachable {
            url: url.clone(),
            source: match source.downcast_ref::<SharedCause>() {
                Some(c) => Box::new(c.clone()),
                None => source.to_string().into(),
            },
        },
        Error::Status {
            url,
            status,
            reason,
        } => Error::Status {
            url: url.clone(),
            status: *status,
            reason: reason.clone(),
        },
        Error::BadResponse { url, reason } => Error::BadResponse {
            url: url.clone(),
            reason: reason.clone(),
        },
        Error::InvalidConfig { setting, reason } => Error::InvalidConfig {
            setting,
            reason: reason.clone(),
        },
        other => Error::BadResponse {
            url: String::new(),
            reason: other.to_string(),
        },
    }
}

/// Reads a JSON listing or delta, or the seed's header from a registry
/// without `X-Myrpc-Index`. Tolerant of older registries: a missing status
/// reads as up, a missing weight as 1, a missing `recovering` as not said,
/// a missing `delta` as a listing.
fn parse(url: &str, r: &Reply) -> Result<Answer> {
    let bad = |reason: String| Error::BadResponse {
        url: url.to_string(),
        reason,
    };
    let header_recovering = r
        .header(HEADER_RECOVERING)
        .map(|v| v.trim().eq_ignore_ascii_case("true"));
    let Some(index) = r.header(HEADER_INDEX) else {
        let servers = split_servers(r.header(HEADER_SERVERS).unwrap_or(""));
        validate_all(&servers).map_err(|e| bad(format!("the listing holds an {e}")))?;
        return Ok(Answer::Full(Fetched {
            instances: servers.into_iter().map(Instance::new).collect(),
            index: None,
            recovering: header_recovering,
        }));
    };
    let index = index
        .parse::<u64>()
        .map_err(|_| bad(format!("X-Myrpc-Index {index:?} is not a number")))?;
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .map_err(|e| bad(format!("the JSON listing does not parse: {e}")))?;
    let recovering = match (header_recovering, v["recovering"].as_bool()) {
        (None, None) => None,
        (h, j) => Some(h.unwrap_or(false) || j.unwrap_or(false)),
    };
    if v["delta"].as_bool() == Some(true) {
        let since = v["since"]
            .as_u64()
            .ok_or_else(|| bad("a delta has no since index".into()))?;
        let list = |name: &str| {
            v[name]
                .as_array()
                .ok_or_else(|| bad(format!("a delta has no {name} array")))
        };
        let mut removed = Vec::new();
        for a in list("removed")? {
            let addr = a
                .as_str()
                .ok_or_else(|| bad("a removed address is not a string".into()))?;
            crate::protocol::validate_addr(addr)
                .map_err(|e| bad(format!("the delta holds an {e}")))?;
            removed.push(addr.to_string());
        }
        return Ok(Answer::Delta(Patch {
            since,
            index,
            recovering,
            added: servers(list("added")?, &bad)?,
            changed: servers(list("changed")?, &bad)?,
            removed,
        }));
    }
    let list = v["servers"]
        .as_array()
        .ok_or_else(|| bad("the JSON listing has no servers array".into()))?;
    Ok(Answer::Full(Fetched {
        instances: servers(list, &bad)?,
        index: Some(index),
        recovering,
    }))
}

/// The instances of a JSON array of server objects.
fn servers(list: &[serde_json::Value], bad: &dyn Fn(String) -> Error) -> Result<Vec<Instance>> {
    let mut instances = Vec::with_capacity(list.len());
    for s in list {
        let addr = s["addr"]
            .as_str()
            .ok_or_else(|| bad("a server has no addr".into()))?;
        crate::protocol::validate_addr(addr)
            .map_err(|e| bad(format!("the listing holds an {e}")))?;
        let mut i = Instance::new(addr.to_string());
        i.weight = s["weight"]
            .as_u64()
            .map_or(1, |w| w.clamp(1, 10_000) as u32);
        if let Some(meta) = s["meta"].as_object() {
            i.meta = meta
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
        }
        // A status this client does not know takes no new work from it.
        i.status = match s["status"].as_str() {
            None => Status::Up,
            Some(st) => st.parse().unwrap_or(Status::Draining),
        };
        i.expires_in = s["expires_in_ms"].as_u64().map(Duration::from_millis);
        instances.push(i);
    }
    Ok(instances)
}

/// The JSON listing of `service` at `registry_url`, as the registry sends it
/// (`?format=json`), with the token and certificate authority of `options`.
///
/// # Errors
///
/// [`Error::InvalidService`], [`Error::Unreachable`], [`Error::Status`];
/// [`Error::InvalidConfig`] for a CA file that cannot be read or holds no
/// certificate, or an `https://` URL in a build without the `tls` feature.
pub(crate) fn list_json_with(
    registry_url: &str,
    service: &str,
    options: &CallOptions,
) -> Result<String> {
    let url = service_url(registry_url, service)?;
    let agent = options.agent(&url)?;
    let auth = client::bearer(options.token.as_deref());
    let headers: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let reply =
        client::call(&agent, Verb::Get, &format!("{url}?format=json"), &headers)?.ok(&url)?;
    if reply.header(HEADER_INDEX).is_none() {
        return Err(Error::BadResponse {
            url,
            reason: "the registry speaks only the seed's protocol (no JSON listings)".into(),
        });
    }
    Ok(reply.body)
}

impl std::fmt::Debug for RegistryDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDiscovery")
            .field("urls", &self.shared.urls)
            .field("period", &self.shared.period)
            .field("watch", &self.watcher.is_some())
            .finish()
    }
}

impl Drop for RegistryDiscovery {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

impl Discovery for RegistryDiscovery {
    fn refresh(&self) -> Result<()> {
        let _guard = self.shared.fetching.lock();
        self.shared.fetch_and_store(None, None)
    }

    /// Replaces the list until the next fetch, a refresh period from now.
    /// The list is used as given: filters do not apply to it.
    fn update(&self, servers: Vec<String>) -> Result<()> {
        validate_all(&servers)?;
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        st.picker
            .set(servers.into_iter().map(Instance::new).collect());
        st.fetched = Some(now);
        st.next_attempt = Some(now + self.shared.period);
        Ok(())
    }

    fn get(&self, mode: SelectMode) -> Result<String> {
        let mut st = self.pickable()?;
        // The URL is only formatted for the error: picks stay allocation-free
        // but for the address itself.
        st.picker.try_pick(mode).ok_or_else(|| Error::NoServers {
            source: self.url().to_string(),
        })
    }

    fn get_all(&self) -> Result<Vec<String>> {
        Ok(self.pickable()?.picker.pickable_addrs())
    }

    fn instances(&self) -> Result<Vec<Instance>> {
        Ok(self.pickable()?.picker.instances())
    }

    fn get_instance(&self, mode: SelectMode) -> Result<Instance> {
        let mut st = self.pickable()?;
        st.picker
            .try_pick_instance(mode)
            .ok_or_else(|| Error::NoServers {
                source: self.url().to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(addrs: &[&str]) -> Vec<Instance> {
        addrs.iter().map(|a| Instance::new(a.to_string())).collect()
    }

    fn patch(added: &[&str], changed: &[(&str, u32)], removed: &[&str]) -> Patch {
        Patch {
            since: 1,
            index: 2,
            recovering: Some(false),
            added: list(added),
            changed: changed
                .iter()
                .map(|(a, w)| {
                    let mut i = Instance::new(a.to_string());
                    i.weight = *w;
                    i
                })
                .collect(),
            removed: removed.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn addrs_weights(l: &[Instance]) -> Vec<(&str, u32)> {
        l.iter().map(|i| (i.addr(), i.weight())).collect()
    }

    #[test]
    fn a_patch_applies_to_the_list_it_starts_from_and_keeps_it_sorted() {
        let before = list(&["tcp@b:1", "tcp@d:1", "tcp@f:1"]);
        let p = patch(&["tcp@a:1", "tcp@e:1"], &[("tcp@d:1", 5)], &["tcp@f:1"]);
        let after = p.apply_to(&before).unwrap();
        assert_eq!(
            addrs_weights(&after),
            [
                ("tcp@a:1", 1),
                ("tcp@b:1", 1),
                ("tcp@d:1", 5),
                ("tcp@e:1", 1)
            ]
        );
        // An address that left and came back (removed, then added).
        let p = patch(&["tcp@b:1"], &[], &["tcp@b:1"]);
        assert_eq!(addrs_weights(&p.apply_to(&before).unwrap()).len(), 3);
    }

    #[test]
    fn a_patch_that_does_not_fit_the_list_is_refused() {
        let before = list(&["tcp@b:1", "tcp@d:1"]);
        for p in [
            patch(&["tcp@b:1"], &[], &[]),      // added, but there
            patch(&[], &[("tcp@c:1", 2)], &[]), // changed, but not there
            patch(&[], &[], &["tcp@c:1"]),      // removed, but not there
        ] {
            assert!(p.apply_to(&before).is_none());
        }
        // A list not sorted by address is not one a registry sent.
        let unsorted = list(&["tcp@d:1", "tcp@b:1"]);
        assert!(patch(&[], &[], &[]).apply_to(&unsorted).is_none());
    }
}
