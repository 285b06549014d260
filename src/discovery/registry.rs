//! `RegistryDiscovery`: the list of servers fetched from a registry (or
//! from etcd, feature `etcd`), kept fresh by a period or a long-poll, and
//! served stale while the source cannot be reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Discovery, Picker, SelectMode, validate_all};
use crate::client::{self, CallOptions, DEFAULT_CALL_TIMEOUT, Reply, Verb};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::protocol::{HEADER_INDEX, HEADER_SERVERS, service_url, split_servers};
use crate::rand::jitter;

/// Default time a fetched list is used before the next fetch.
pub const DEFAULT_REFRESH_PERIOD: Duration = Duration::from_secs(10);
/// First wait before retrying a failed fetch; doubled up to the period.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between two watch attempts while the registry is down.
const MAX_WATCH_RETRY: Duration = Duration::from_secs(5);
/// How long an empty answer after a registry restart is distrusted when the
/// entries' TTL is unknown: the seed's default TTL.
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

    /// Builds the discovery; nothing is fetched until it is first used (in
    /// watch mode, the watching thread starts fetching at once).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`], [`Error::InvalidConfig`] (zero timeout or
    /// wait), [`Error::Io`] when the watch thread cannot be spawned.
    pub fn build(self) -> Result<RegistryDiscovery> {
        #[cfg(feature = "tls")]
        let trust = client::Trust::from_ca_file(self.ca_file.as_deref())?;
        #[cfg(not(feature = "tls"))]
        let trust = client::Trust::default();
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
            #[cfg(feature = "etcd")]
            etcd,
            state: Mutex::new(State {
                picker: Picker::new(Vec::new()),
                fetched: None,
                next_attempt: None,
                retry: FIRST_RETRY,
                failing: false,
                index: None,
                ttl_hint: None,
                hold_until: None,
                held_empty: false,
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
///   fails only while no list was ever fetched, or the list is empty.
/// - Fallbacks: registries added with
///   [`also`](RegistryDiscoveryBuilder::also) are tried in turn.
/// - Empty-list guard: an empty answer from a registry whose index went
///   backwards (it restarted and lost its table) does not wipe a non-empty
///   list at once; the old list is served until one TTL has passed or the
///   registry lists servers again.
/// - Watch mode: a thread keeps a long-poll open; stopping or dropping the
///   discovery ends it at once.
///
/// It asks for `?format=json` (addresses with weights); an answer without
/// `X-Myrpc-Index` comes from a registry that speaks only the seed's
/// protocol (the Go original) and is read from `X-Myrpc-Servers` instead.
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
    fetched: Option<Instant>,
    next_attempt: Option<Instant>,
    retry: Duration,
    failing: bool,
    /// The registry's index at the last answer.
    index: Option<u64>,
    /// The longest remaining TTL seen in the last non-empty answer.
    ttl_hint: Option<Duration>,
    /// While set, empty answers after a registry restart are not trusted.
    hold_until: Option<Instant>,
    /// The registry's last answer was empty but held back by the guard.
    held_empty: bool,
}

impl State {
    /// Whether a fetch is due. The coarse clock (a few ms of resolution,
    /// 4 ns to read): every pick asks.
    fn due(&self) -> bool {
        self.next_attempt.is_none_or(|t| SystemClock.now() >= t)
    }

    /// Lets a held-back empty answer through once its hold has passed, even
    /// when no fetch is due (a watch may be parked for long).
    fn release_hold(&mut self) {
        if self.held_empty && self.hold_until.is_some_and(|t| Instant::now() >= t) {
            self.hold_until = None;
            self.held_empty = false;
            self.picker.set(Vec::new(), Vec::new());
        }
    }
}

/// One answer: the servers with their weights, and the index if any.
pub(crate) struct Fetched {
    pub(crate) servers: Vec<String>,
    pub(crate) weights: Vec<u32>,
    pub(crate) index: Option<u64>,
    pub(crate) ttl_hint: Option<Duration>,
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

    /// Time since the list was last fetched successfully, `None` before the
    /// first success: how stale the servers `get` picks from may be.
    pub fn age(&self) -> Option<Duration> {
        self.shared.state.lock().fetched.map(|t| t.elapsed())
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
        match sh.fetch_and_store(None) {
            Err(_) if have_list => Ok(()),
            other => other,
        }
    }
}

impl Shared {
    /// One GET to each registry in turn, starting with the one that
    /// answered last, until one answers; `watch`: a long-poll from `index`.
    fn fetch(&self, watch: Option<u64>) -> Result<Fetched> {
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.etcd {
            return etcd.fetch(watch, self.wait);
        }
        let n = self.urls.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last_err = None;
        for k in 0..n {
            let i = (first + k) % n;
            let url = &self.urls[i];
            let auth: Vec<(&str, &str)> = self.auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let result = match watch {
                None => client::call(&self.agent, Verb::Get, &format!("{url}?format=json"), &auth),
                Some(index) => client::long_poll(
                    &self.watch_agent,
                    &format!(
                        "{url}?format=json&index={index}&wait={}ms",
                        self.wait.as_millis()
                    ),
                    &auth,
                    self.wait + self.wait / 16 + Duration::from_secs(2),
                ),
            };
            match result.and_then(|r| r.ok(url)).and_then(|r| parse(url, &r)) {
                Ok(f) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(f);
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
    fn fetch_and_store(&self, watch: Option<u64>) -> Result<()> {
        let result = self.fetch(watch);
        let now = Instant::now();
        let mut st = self.state.lock();
        match result {
            Ok(f) => {
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
                Err(e)
            }
        }
    }

    fn watch_loop(&self) {
        let mut retry = FIRST_RETRY;
        while !self.stop.load(Ordering::Acquire) {
            let index = self.state.lock().index;
            // A plain fetch counts as the one fetch at a time; a long-poll
            // does not hold that lock, or an explicit refresh would wait
            // for the poll's whole wait.
            let result = match index {
                None => {
                    let _g = self.fetching.lock();
                    self.fetch_and_store(None)
                }
                Some(_) => self.fetch_and_store(index),
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

/// Stores an answer, unless it is an empty list from a registry that
/// restarted empty while a non-empty list is in use (the empty-list guard).
fn apply(st: &mut State, f: Fetched, now: Instant) {
    let went_back = matches!((f.index, st.index), (Some(new), Some(old)) if new < old);
    if f.servers.is_empty() && !st.picker.servers.is_empty() {
        if went_back && st.hold_until.is_none() {
            let hold = st.ttl_hint.unwrap_or(DEFAULT_HOLD);
            st.hold_until = Some(now + hold);
            log::warn!(
                "discovery: the registry restarted empty; keeping the last list for up to {hold:?}"
            );
        }
        if st.hold_until.is_some_and(|t| now < t) {
            st.index = f.index;
            st.held_empty = true;
            return;
        }
    }
    st.hold_until = None;
    st.held_empty = false;
    if !f.servers.is_empty() {
        st.ttl_hint = f.ttl_hint.or(st.ttl_hint);
    }
    st.index = f.index;
    st.picker.set(f.servers, f.weights);
}

/// Reads a JSON listing, or the seed's header from a registry without
/// `X-Myrpc-Index`.
fn parse(url: &str, r: &Reply) -> Result<Fetched> {
    let bad = |reason: String| Error::BadResponse {
        url: url.to_string(),
        reason,
    };
    let Some(index) = r.header(HEADER_INDEX) else {
        let servers = split_servers(r.header(HEADER_SERVERS).unwrap_or(""));
        validate_all(&servers).map_err(|e| bad(format!("the listing holds an {e}")))?;
        let weights = vec![1; servers.len()];
        return Ok(Fetched {
            servers,
            weights,
            index: None,
            ttl_hint: None,
        });
    };
    let index = index
        .parse::<u64>()
        .map_err(|_| bad(format!("X-Myrpc-Index {index:?} is not a number")))?;
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .map_err(|e| bad(format!("the JSON listing does not parse: {e}")))?;
    let list = v["servers"]
        .as_array()
        .ok_or_else(|| bad("the JSON listing has no servers array".into()))?;
    let mut servers = Vec::with_capacity(list.len());
    let mut weights = Vec::with_capacity(list.len());
    let mut ttl_hint: Option<Duration> = None;
    for s in list {
        let addr = s["addr"]
            .as_str()
            .ok_or_else(|| bad("a server has no addr".into()))?;
        servers.push(addr.to_string());
        weights.push(
            s["weight"]
                .as_u64()
                .map_or(1, |w| w.clamp(1, 10_000) as u32),
        );
        if let Some(ms) = s["expires_in_ms"].as_u64() {
            ttl_hint = Some(ttl_hint.unwrap_or_default().max(Duration::from_millis(ms)));
        }
    }
    validate_all(&servers).map_err(|e| bad(format!("the listing holds an {e}")))?;
    Ok(Fetched {
        servers,
        weights,
        index: Some(index),
        ttl_hint,
    })
}

/// The JSON listing of `service` at `registry_url`, as the registry sends it
/// (`?format=json`), with the registry's bearer token if it protects reads.
///
/// # Errors
///
/// [`Error::InvalidService`], [`Error::Unreachable`], [`Error::Status`].
pub fn list_json(registry_url: &str, service: &str, token: Option<&str>) -> Result<String> {
    let mut options = CallOptions::new();
    if let Some(t) = token {
        options = options.token(t);
    }
    list_json_with(registry_url, service, &options)
}

/// [`list_json`] with [`CallOptions`]: a token, and with the `tls` feature
/// the certificate authority of an `https://` registry.
///
/// # Errors
///
/// As [`list_json`], and [`Error::InvalidConfig`] for a CA file that cannot
/// be read or holds no certificate, or an `https://` URL in a build without
/// the `tls` feature.
pub fn list_json_with(registry_url: &str, service: &str, options: &CallOptions) -> Result<String> {
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
        self.shared.fetch_and_store(None)
    }

    /// Replaces the list until the next fetch, a refresh period from now.
    fn update(&self, servers: Vec<String>) -> Result<()> {
        validate_all(&servers)?;
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        let weights = vec![1; servers.len()];
        st.picker.set(servers, weights);
        st.fetched = Some(now);
        st.next_attempt = Some(now + self.shared.period);
        Ok(())
    }

    fn get(&self, mode: SelectMode) -> Result<String> {
        // One lock for the usual pick, when no fetch is due: picks from
        // several threads contend for it.
        let mut st = self.shared.state.lock();
        if st.due() {
            drop(st);
            self.ensure_fresh()?;
            st = self.shared.state.lock();
        }
        st.release_hold();
        // The URL is only formatted for the error: picks stay allocation-free
        // but for the address itself.
        st.picker.try_pick(mode).ok_or_else(|| Error::NoServers {
            source: self.url().to_string(),
        })
    }

    fn get_all(&self) -> Result<Vec<String>> {
        self.ensure_fresh()?;
        let mut st = self.shared.state.lock();
        st.release_hold();
        Ok(st.picker.servers.clone())
    }
}
