use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Discovery, Picker, SelectMode, validate_all};
use crate::client::{self, DEFAULT_CALL_TIMEOUT, Verb};
use crate::error::{Error, Result};
use crate::protocol::{HEADER_INDEX, HEADER_SERVERS, service_url, split_lines, split_servers};
use crate::rand::jitter;

/// Default time a fetched list is used before the next fetch.
pub const DEFAULT_REFRESH_PERIOD: Duration = Duration::from_secs(10);
/// First wait before retrying a failed fetch; doubled up to the period.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// Builds a [`RegistryDiscovery`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RegistryDiscoveryBuilder {
    registry: String,
    service: String,
    period: Duration,
    timeout: Duration,
}

impl RegistryDiscoveryBuilder {
    /// The service to discover. Defaults to the default service.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
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

    /// Builds the discovery; nothing is fetched until it is first used.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidService`] or [`Error::InvalidConfig`] (zero timeout).
    pub fn build(self) -> Result<RegistryDiscovery> {
        let url = service_url(&self.registry, &self.service)?;
        if self.timeout.is_zero() {
            return Err(Error::config("timeout", "must be above zero"));
        }
        Ok(RegistryDiscovery {
            list_url: format!("{url}?format=text"),
            url,
            agent: client::agent(self.timeout),
            period: self.period,
            state: Mutex::new(State {
                picker: Picker::new(Vec::new()),
                fetched: None,
                next_attempt: None,
                retry: FIRST_RETRY,
                failing: false,
            }),
            fetching: Mutex::new(()),
        })
    }
}

/// A discovery that asks a registry for the alive servers, as the seed's
/// `GeeRegistryDiscovery`, and reuses the answer for the refresh period.
///
/// The list is fetched with the lock that [`get`](Discovery::get) needs
/// released, and by one thread at a time: while one fetches, the others
/// pick from the current list. When a fetch fails, the last good list is
/// kept and served (the failure is logged once per outage), and the fetch is
/// retried with jittered backoff; `get` fails only while no list was ever
/// fetched.
///
/// It asks for `?format=text` and reads the body; an answer without
/// `X-Myrpc-Index` comes from a registry that speaks only the seed's
/// protocol (the Go original), and is read from `X-Myrpc-Servers` instead.
pub struct RegistryDiscovery {
    url: String,
    list_url: String,
    agent: ureq::Agent,
    period: Duration,
    state: Mutex<State>,
    /// Held while fetching: one fetch at a time.
    fetching: Mutex<()>,
}

struct State {
    picker: Picker,
    fetched: Option<Instant>,
    next_attempt: Option<Instant>,
    retry: Duration,
    failing: bool,
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
            registry: registry_url.to_string(),
            service: String::new(),
            period: DEFAULT_REFRESH_PERIOD,
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// The URL of the service's listing.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Time since the list was last fetched successfully, `None` before the
    /// first success: how stale the servers `get` picks from may be.
    pub fn age(&self) -> Option<Duration> {
        self.state.lock().fetched.map(|t| t.elapsed())
    }

    fn fetch(&self) -> Result<Vec<String>> {
        let reply = client::call(&self.agent, Verb::Get, &self.list_url, &[])?.ok(&self.url)?;
        let servers = if reply.header(HEADER_INDEX).is_some() {
            split_lines(&reply.body)
        } else {
            split_servers(reply.header(HEADER_SERVERS).unwrap_or(""))
        };
        validate_all(&servers).map_err(|e| Error::BadResponse {
            url: self.url.clone(),
            reason: format!("the listing holds an {e}"),
        })?;
        Ok(servers)
    }

    /// Fetches and stores; the caller holds `fetching`.
    fn fetch_and_store(&self) -> Result<()> {
        let result = self.fetch();
        let now = Instant::now();
        let mut st = self.state.lock();
        match result {
            Ok(servers) => {
                if st.failing {
                    log::info!("discovery: {} answers again", self.url);
                }
                st.picker.servers = servers;
                st.fetched = Some(now);
                st.next_attempt = Some(now + self.period);
                st.retry = FIRST_RETRY;
                st.failing = false;
                Ok(())
            }
            Err(e) => {
                if !st.failing && st.fetched.is_some() {
                    log::warn!("discovery: {e}; serving the last list until it answers");
                }
                st.failing = true;
                st.next_attempt = Some(now + jitter(st.retry, 0.5));
                st.retry = (st.retry * 2).min(self.period.max(FIRST_RETRY));
                Err(e)
            }
        }
    }

    /// Fetches when the list is due; see the type's docs for who fetches
    /// and what happens on failure.
    fn ensure_fresh(&self) -> Result<()> {
        let due = |st: &State| st.next_attempt.is_none_or(|t| Instant::now() >= t);
        let have_list = {
            let st = self.state.lock();
            if !due(&st) {
                return Ok(());
            }
            st.fetched.is_some()
        };
        let _guard = if have_list {
            match self.fetching.try_lock() {
                Some(g) => g,
                None => return Ok(()), // another thread fetches; use the list
            }
        } else {
            self.fetching.lock()
        };
        // Another thread may have fetched while this one waited.
        let have_list = {
            let st = self.state.lock();
            if st.fetched.is_some() && !due(&st) {
                return Ok(());
            }
            st.fetched.is_some()
        };
        match self.fetch_and_store() {
            Err(_) if have_list => Ok(()),
            other => other,
        }
    }
}

impl std::fmt::Debug for RegistryDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryDiscovery")
            .field("url", &self.url)
            .field("period", &self.period)
            .finish()
    }
}

impl Discovery for RegistryDiscovery {
    fn refresh(&self) -> Result<()> {
        let _guard = self.fetching.lock();
        self.fetch_and_store()
    }

    /// Replaces the list until the next fetch, a refresh period from now.
    fn update(&self, servers: Vec<String>) -> Result<()> {
        validate_all(&servers)?;
        let now = Instant::now();
        let mut st = self.state.lock();
        st.picker.servers = servers;
        st.fetched = Some(now);
        st.next_attempt = Some(now + self.period);
        Ok(())
    }

    fn get(&self, mode: SelectMode) -> Result<String> {
        self.ensure_fresh()?;
        self.state.lock().picker.pick(mode, &self.url)
    }

    fn get_all(&self) -> Result<Vec<String>> {
        self.ensure_fresh()?;
        Ok(self.state.lock().picker.servers.clone())
    }
}
