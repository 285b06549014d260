//! The same client API over etcd (feature `etcd`): registration with a lease
//! kept alive ([`EtcdRegistration`], the counterpart of
//! [`Heartbeat`](crate::Heartbeat)) and discovery from a range plus watch
//! (`RegistryDiscovery::etcd`), through etcd's JSON gateway (etcd 3.4,
//! `/v3/…`, keys and values base64) with ureq.
//!
//! Keys are `{prefix}/{service}/{addr}` (prefix `/regcenter` by default),
//! values `{"addr": …, "weight": …, "meta": {…}}`, each bound to the
//! registration's lease, so a server that dies without revoking disappears
//! when its lease expires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};

use crate::client::DEFAULT_CALL_TIMEOUT;
use crate::discovery::{Fetched, Instance};
use crate::error::{Error, Result};
use crate::protocol::{validate_addr, validate_service};
use crate::rand::jitter;

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "/regcenter";
/// TTL of a registration that asks for none (etcd grants at least 2 s).
const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// The oldest etcd whose JSON gateway serves `/v3/` (3.3 serves only
/// `/v3beta/`, where every call here would fail as not found).
const LEAST_VERSION: (u64, u64) = (3, 4);

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// The end of the key range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// etcd's int64 fields arrive as JSON strings.
pub(crate) fn int(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
}

/// One or more etcd endpoints, tried in turn.
pub(crate) struct Etcd {
    endpoints: Vec<String>,
    current: AtomicUsize,
    agent: ureq::Agent,
}

impl Etcd {
    pub(crate) fn new(
        endpoints: &[String],
        timeout: Duration,
        trust: &crate::client::Trust,
    ) -> Result<Etcd> {
        if endpoints.is_empty() {
            return Err(Error::config(
                "etcd",
                "no endpoint given; e.g. http://127.0.0.1:2379",
            ));
        }
        for e in endpoints {
            crate::client::check_scheme("etcd", e)?;
            if !(e.starts_with("http://") || (cfg!(feature = "tls") && e.starts_with("https://"))) {
                return Err(Error::config(
                    "etcd",
                    format!("{e:?}: use http://host:port (or https:// with the `tls` feature)"),
                ));
            }
        }
        Ok(Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            agent: crate::client::agent_trusting(timeout, trust),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }

    /// The lease ID of a `/v3/lease/grant` answer.
    pub(crate) fn lease_id(&self, grant: &Value) -> Result<String> {
        grant["ID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::BadResponse {
                url: self.describe(),
                reason: "lease grant without an ID".into(),
            })
    }

    /// Every endpoint, in the order given.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The place in [`endpoints`](Etcd::endpoints) of the one that
    /// answered last.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// One unary call, to each endpoint in turn until one answers.
    pub(crate) fn call(&self, path: &str, body: &Value) -> Result<Value> {
        self.call_bounded(path, body, None)
    }

    /// [`call`](Etcd::call), each member given at most `within` (to
    /// connect, send, and answer) before the next is asked: a member that
    /// hangs (paused, or cut off behind a firewall that drops packets) costs
    /// that long, not the whole call timeout.
    pub(crate) fn call_within(&self, path: &str, body: &Value, within: Duration) -> Result<Value> {
        self.call_bounded(path, body, Some(within))
    }

    fn call_bounded(&self, path: &str, body: &Value, within: Option<Duration>) -> Result<Value> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}{path}", self.endpoints[i]);
            match self.call_one(&url, body, within) {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    fn call_one(&self, url: &str, body: &Value, within: Option<Duration>) -> Result<Value> {
        let request = self.agent.post(url);
        let request = match within {
            Some(t) => request
                .config()
                .timeout_connect(Some(t))
                .timeout_send_request(Some(t))
                .timeout_recv_response(Some(t))
                .timeout_recv_body(Some(t))
                .build(),
            None => request,
        };
        let reply = request
            .header("Content-Type", "application/json")
            .send(body.to_string());
        self.answer(url, reply)
    }

    /// The JSON of an answer, or the error it says.
    fn answer(
        &self,
        url: &str,
        reply: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = reply.map_err(|e| Error::Unreachable {
            url: url.to_string(),
            source: Box::new(e),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| Error::Unreachable {
                url: url.to_string(),
                source: Box::new(e),
            })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse {
            url: url.to_string(),
            reason: format!("etcd answered {status} with something that is not JSON: {e}"),
        })?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        Err(Error::Status {
            url: url.to_string(),
            status,
            reason: format!(
                "etcd: {} (grpc code {})",
                v["message"].as_str().unwrap_or("no message"),
                v["code"]
            ),
        })
    }

    /// Asks the endpoints in turn for etcd's version (`GET /version`) and
    /// refuses one older than 3.4, whose gateway has no `/v3/` API.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the version found and the one
    /// needed; [`Error::Unreachable`], [`Error::Status`] or
    /// [`Error::BadResponse`] when no endpoint answers it.
    pub(crate) fn check_version(&self) -> Result<()> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}/version", self.endpoints[i]);
            match self.answer(&url, self.agent.get(&url).call()) {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return check_version(&url, &v);
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// Opens a watch stream through the gateway, on the endpoint in use
    /// first and on each other in turn while they cannot be reached: the
    /// body `{"create_request": create}`, the stream kept at most `wait`
    /// (its whole body) and its answer awaited as long as `agent` waits for
    /// any answer. Use an agent of its own, whose `shutdown` interrupts it.
    ///
    /// The watch asks for a leader (`Grpc-Metadata-hasleader: true`): a
    /// member that loses quorum ends it with an error object, where
    /// without the header it keeps it open and silent however the
    /// majority's data changes.
    ///
    /// # Errors
    ///
    /// [`Error::Unreachable`] or [`Error::Status`] when no endpoint opens it.
    pub(crate) fn watch(
        &self,
        agent: &ureq::Agent,
        create: &Value,
        wait: Duration,
    ) -> Result<WatchStream> {
        let body = json!({ "create_request": create }).to_string();
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}/v3/watch", self.endpoints[i]);
            let reply = agent
                .post(&url)
                .config()
                .timeout_recv_body(Some(wait))
                .build()
                .header("Content-Type", "application/json")
                .header("Grpc-Metadata-hasleader", "true")
                .send(body.as_str());
            let result = match reply {
                Ok(resp) if resp.status().is_success() => Ok(resp),
                // etcd's reason comes in the unary error shape.
                Ok(resp) => match self.answer(&url, Ok(resp)) {
                    Err(e) => Err(e),
                    Ok(v) => Err(Error::BadResponse {
                        url: url.clone(),
                        reason: format!("etcd answered the watch with {v}"),
                    }),
                },
                Err(e) => Err(Error::Unreachable {
                    url: url.clone(),
                    source: Box::new(e),
                }),
            };
            match result {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(WatchStream {
                        lines: std::io::BufRead::lines(std::io::BufReader::new(
                            resp.into_body().into_reader(),
                        )),
                        url,
                        endpoint: i,
                    });
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// Moves off endpoint `i` if it is the one in use: it answered, but
    /// badly (a watch stream it ended with an error), so the next call
    /// tries another member first.
    pub(crate) fn avoid(&self, i: usize) {
        let next = (i + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Refuses a `/version` answer older than [`LEAST_VERSION`], on the member
/// or on the cluster.
fn check_version(url: &str, v: &Value) -> Result<()> {
    let parse = |s: &str| -> Option<(u64, u64)> {
        let mut p = s.split('.');
        Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
    };
    let server = v["etcdserver"].as_str();
    let cluster = v["etcdcluster"].as_str();
    let Some(found) = server.and_then(parse) else {
        return Err(Error::BadResponse {
            url: url.to_string(),
            reason: format!("not an etcd version answer: {v}"),
        });
    };
    let cluster_found = cluster.and_then(parse);
    if found < LEAST_VERSION || cluster_found.is_some_and(|c| c < LEAST_VERSION) {
        return Err(Error::config(
            "etcd",
            format!(
                "{url} answers etcd {} (cluster version {}); regcenter needs etcd {}.{} or newer, \
                 whose JSON gateway serves /v3/: upgrade etcd",
                server.unwrap_or("?"),
                cluster.unwrap_or("?"),
                LEAST_VERSION.0,
                LEAST_VERSION.1
            ),
        ));
    }
    Ok(())
}

/// One message of a gateway watch stream.
#[derive(Debug)]
pub(crate) enum WatchMsg {
    /// The watch is set up.
    Created,
    /// Events (a PUT has no `type`; a DELETE, lease expiry included, has
    /// `"type": "DELETE"`), as etcd sent them.
    Events(Vec<Value>),
    /// Nothing changed up to the header's revision (a progress
    /// notification).
    Progress,
    /// etcd cancelled the watch: the history it starts from was compacted
    /// away (`compact_revision`, the oldest revision left), or for
    /// `reason`. The stream stays open and says nothing more.
    Canceled {
        compact_revision: Option<u64>,
        reason: String,
    },
}

/// A watch stream opened by [`Etcd::watch`]: its messages, one a line.
pub(crate) struct WatchStream {
    url: String,
    /// Index of the endpoint it is open on, for [`Etcd::avoid`].
    endpoint: usize,
    lines: std::io::Lines<std::io::BufReader<ureq::BodyReader<'static>>>,
}

impl WatchStream {
    /// Where the stream is open.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Index of the endpoint it is open on.
    pub(crate) fn endpoint(&self) -> usize {
        self.endpoint
    }
}

impl Iterator for WatchStream {
    type Item = Result<WatchMsg>;

    /// The next message; `None` once the stream has ended: closed (with or
    /// without its last chunk), broken, or its wait passed. An error object
    /// (etcd shutting down, a member without a leader) is the last item.
    fn next(&mut self) -> Option<Result<WatchMsg>> {
        let line = self.lines.next()?.ok()?;
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                return Some(Err(Error::BadResponse {
                    url: self.url.clone(),
                    reason: format!("a watch message that is not JSON: {e}"),
                }));
            }
        };
        if v["error"].is_object() {
            let e = &v["error"];
            return Some(Err(Error::Status {
                url: self.url.clone(),
                status: int(&e["http_code"]).unwrap_or(503) as u16,
                reason: format!(
                    "etcd ended the watch: {} (grpc code {})",
                    e["message"].as_str().unwrap_or("no message"),
                    e["grpc_code"]
                ),
            }));
        }
        let r = &v["result"];
        Some(Ok(if r["canceled"] == true {
            WatchMsg::Canceled {
                compact_revision: int(&r["compact_revision"]).filter(|&c| c > 0),
                reason: r["cancel_reason"].as_str().unwrap_or("").to_string(),
            }
        } else if r["created"] == true {
            WatchMsg::Created
        } else {
            match r["events"].as_array() {
                Some(e) if !e.is_empty() => WatchMsg::Events(e.clone()),
                _ => WatchMsg::Progress,
            }
        }))
    }
}

fn key_of(prefix: &str, service: &str, addr: &str) -> String {
    format!("{}/{service}/{addr}", prefix.trim_end_matches('/'))
}

/// Keeps a server registered in etcd: a lease with the TTL, the key bound
/// to it, and a thread that keeps the lease alive every third of the TTL.
/// When etcd says the lease is gone (it expired during a partition, or etcd
/// lost its data), a new lease is granted and the key put again.
///
/// [`stop`](EtcdRegistration::stop), or dropping the handle, ends and joins
/// the thread and revokes the lease, which deletes the key at once.
#[must_use = "dropping the EtcdRegistration stops it and removes the server"]
pub struct EtcdRegistration {
    shared: Arc<RegShared>,
    thread: Option<JoinHandle<()>>,
}

struct RegShared {
    etcd: Etcd,
    key: String,
    value: String,
    ttl_secs: u64,
    /// How long one member may take to answer a keep-alive before the next
    /// is asked: a third of the TTL (at least 500 ms, at most the call
    /// timeout), so that a member that hangs leaves time to renew through
    /// another before the lease runs out.
    renew_within: Duration,
    lease: Mutex<String>,
    beats: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl RegShared {
    /// Grants a lease and puts the key bound to it.
    fn register(&self) -> Result<()> {
        let grant = self
            .etcd
            .call("/v3/lease/grant", &json!({ "TTL": self.ttl_secs }))?;
        let id = self.etcd.lease_id(&grant)?;
        self.etcd.call(
            "/v3/kv/put",
            &json!({ "key": b64(self.key.as_bytes()), "value": b64(self.value.as_bytes()), "lease": id }),
        )?;
        *self.lease.lock() = id;
        Ok(())
    }

    /// Keeps the lease alive; registers again when etcd no longer has it.
    fn keep_alive(&self) -> Result<()> {
        let id = self.lease.lock().clone();
        let v = self.etcd.call_within(
            "/v3/lease/keepalive",
            &json!({ "ID": id }),
            self.renew_within,
        )?;
        // A gone lease is answered 200 without a TTL (CRATE-NOTES §4.3).
        if int(&v["result"]["TTL"]).is_some_and(|t| t > 0) {
            return Ok(());
        }
        log::warn!("etcd lease of {} is gone; registering again", self.key);
        self.register()
    }
}

/// Builds an [`EtcdRegistration`]: [`EtcdRegistration::builder`], the
/// setters, then [`start`](EtcdRegistrationBuilder::start). The setters are
/// those of a [`HeartbeatBuilder`](crate::HeartbeatBuilder) that etcd has a
/// use for, plus [`prefix`](EtcdRegistrationBuilder::prefix).
#[derive(Debug, Clone)]
#[must_use]
pub struct EtcdRegistrationBuilder {
    endpoints: Vec<String>,
    addr: String,
    prefix: String,
    service: String,
    period: Option<Duration>,
    ttl: Option<Duration>,
    weight: Option<u32>,
    meta: Vec<(String, String)>,
    timeout: Duration,
    #[cfg(feature = "tls")]
    ca_file: Option<std::path::PathBuf>,
}

impl EtcdRegistrationBuilder {
    /// Trusts only the certificate authorities in this PEM file for
    /// `https://` endpoints (a private CA), instead of the public roots.
    /// Read at [`start`](EtcdRegistrationBuilder::start). Defaults to the
    /// public roots.
    #[cfg(feature = "tls")]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The key prefix. Defaults to [`DEFAULT_PREFIX`], `/regcenter`.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// The service to register in. Defaults to the default service.
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Time between keep-alives (at least 100 ms). Defaults to a third of
    /// the TTL.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }

    /// The lease's TTL, rounded up to whole seconds, at least 2. Defaults
    /// to 5 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The weight for weighted selection, stored in the key's value.
    /// Defaults to 1.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// Adds a metadata label, stored in the key's value. Defaults to none.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.push((key.into(), value.into()));
        self
    }

    /// Bound of each phase of each call to etcd. Defaults to 2 s. A
    /// keep-alive gives each member at most a third of the TTL (and at
    /// least 500 ms) before it asks the next, so that one member that hangs
    /// does not let the lease run out.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Registers the server (a lease, and the key bound to it) and keeps
    /// the lease alive from a thread.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddr`], [`Error::InvalidService`],
    /// [`Error::InvalidConfig`] for bad input or an etcd older than 3.4
    /// (its `/version`, asked first, names the version found);
    /// [`Error::Unreachable`] or
    /// [`Error::Status`] (with etcd's message) when the first registration
    /// fails; [`Error::Io`] when the thread cannot be spawned.
    pub fn start(self) -> Result<EtcdRegistration> {
        EtcdRegistration::launch(self)
    }
}

impl EtcdRegistration {
    /// Starts building a registration of `addr` in etcd, through the JSON
    /// gateway of `endpoints` (e.g. `http://127.0.0.1:2379`), tried in
    /// turn. Nothing is checked or sent until
    /// [`start`](EtcdRegistrationBuilder::start).
    ///
    /// Unlike a [`Heartbeat`](crate::Heartbeat), it has no `also` (the
    /// endpoints are one etcd cluster, which holds the key once) and no
    /// `token`.
    pub fn builder(endpoints: &[&str], addr: &str) -> EtcdRegistrationBuilder {
        EtcdRegistrationBuilder {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            addr: addr.to_string(),
            prefix: DEFAULT_PREFIX.to_string(),
            service: String::new(),
            period: None,
            ttl: None,
            weight: None,
            meta: Vec::new(),
            timeout: DEFAULT_CALL_TIMEOUT,
            #[cfg(feature = "tls")]
            ca_file: None,
        }
    }

    fn launch(options: EtcdRegistrationBuilder) -> Result<EtcdRegistration> {
        let addr = options.addr.as_str();
        let prefix = options.prefix.as_str();
        validate_addr(addr)?;
        validate_service(&options.service)?;
        #[cfg(feature = "tls")]
        let trust = crate::client::Trust::from_ca_file(options.ca_file.as_deref())?;
        #[cfg(not(feature = "tls"))]
        let trust = crate::client::Trust::default();
        let etcd = Etcd::new(&options.endpoints, options.timeout, &trust)?;
        etcd.check_version()?;
        let ttl = options.ttl.unwrap_or(DEFAULT_TTL);
        let ttl_secs = ttl.as_secs_f64().ceil().max(2.0) as u64;
        let period = options
            .period
            .unwrap_or(Duration::from_secs(ttl_secs) / 3)
            .max(Duration::from_millis(100));
        let meta: serde_json::Map<String, Value> = options
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let value = json!({ "addr": addr, "weight": options.weight.unwrap_or(1), "meta": meta })
            .to_string();
        let shared = Arc::new(RegShared {
            etcd,
            key: key_of(prefix, &options.service, addr),
            value,
            ttl_secs,
            renew_within: (Duration::from_secs(ttl_secs) / 3)
                .max(Duration::from_millis(500))
                .min(options.timeout),
            lease: Mutex::new(String::new()),
            beats: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        shared.register()?;
        shared.beats.store(1, Ordering::Relaxed);
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("regcenter-etcd-lease".into())
            .spawn(move || lease_loop(&s, period))
            .map_err(|e| Error::io("spawn the etcd lease thread", e))?;
        Ok(EtcdRegistration {
            shared,
            thread: Some(thread),
        })
    }

    /// Registrations and keep-alives etcd has accepted so far.
    pub fn beats(&self) -> u64 {
        self.shared.beats.load(Ordering::Relaxed)
    }

    /// The key the server is registered under.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Stops keeping the lease alive, joins the thread and revokes the
    /// lease (the key is deleted at once).
    ///
    /// # Errors
    ///
    /// The error of the revoke when etcd cannot be reached (the key then
    /// goes when the lease expires).
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        *self.shared.stop.lock() = true;
        self.shared.wake.notify_all();
        let _ = t.join();
        let id = self.shared.lease.lock().clone();
        match self
            .shared
            .etcd
            .call("/v3/lease/revoke", &json!({ "ID": id }))
        {
            Ok(_) | Err(Error::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            log::warn!("etcd registration {}: {e}", self.shared.key);
        }
    }
}

impl std::fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("key", &self.shared.key)
            .finish()
    }
}

fn lease_loop(s: &RegShared, period: Duration) {
    let mut wait = period;
    let mut backoff = Duration::from_millis(100);
    let mut failing = false;
    loop {
        {
            let mut stop = s.stop.lock();
            let deadline = Instant::now() + wait;
            s.wake.wait_while_until(&mut stop, |stop| !*stop, deadline);
            if *stop {
                return;
            }
        }
        match s.keep_alive() {
            Ok(()) => {
                if failing {
                    log::info!("etcd registration {} is kept alive again", s.key);
                    failing = false;
                }
                s.beats.fetch_add(1, Ordering::Relaxed);
                wait = period;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                if !failing {
                    log::warn!("etcd registration {}: {e}; retrying", s.key);
                    failing = true;
                }
                wait = jitter(backoff.min(period), 0.5).min(period);
                backoff = (backoff * 2).min(period);
            }
        }
    }
}

/// Discovery's view of etcd: a range over the service's keys, and a watch
/// used as a long-poll (wait for the first event after a revision, then
/// range again).
pub(crate) struct EtcdSource {
    etcd: Etcd,
    watch_agent: ureq::Agent,
    key: Vec<u8>,
    end: Vec<u8>,
    /// Whether etcd's version was found new enough (asked at the first
    /// fetch, and again until one answers).
    version_ok: AtomicBool,
}

impl EtcdSource {
    pub(crate) fn new(
        endpoints: &[String],
        prefix: &str,
        service: &str,
        timeout: Duration,
        trust: &crate::client::Trust,
    ) -> Result<EtcdSource> {
        validate_service(service)?;
        let key = format!("{}/{service}/", prefix.trim_end_matches('/')).into_bytes();
        Ok(EtcdSource {
            etcd: Etcd::new(endpoints, timeout, trust)?,
            watch_agent: crate::client::agent_trusting(timeout, trust),
            end: prefix_end(&key),
            key,
            version_ok: AtomicBool::new(false),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} {}",
            self.etcd.describe(),
            String::from_utf8_lossy(&self.key)
        )
    }

    /// Interrupts a watch blocked in its read (used on stop).
    pub(crate) fn interrupt(&self) {
        self.watch_agent.clone().shutdown();
    }

    pub(crate) fn fetch(&self, watch: Option<u64>, wait: Duration) -> Result<Fetched> {
        if !self.version_ok.load(Ordering::Relaxed) {
            self.etcd.check_version()?;
            self.version_ok.store(true, Ordering::Relaxed);
        }
        let now = self.range()?;
        let Some(rev) = watch else {
            return Ok(now);
        };
        // A revision below the one watched from: etcd lost its data and
        // started again; answer at once (the index went backwards).
        if now.index.is_some_and(|r| r != rev) {
            return Ok(now);
        }
        self.wait_event(rev, wait)?;
        self.range()
    }

    fn range(&self) -> Result<Fetched> {
        let v = self.etcd.call(
            "/v3/kv/range",
            &json!({ "key": b64(&self.key), "range_end": b64(&self.end) }),
        )?;
        let revision = int(&v["header"]["revision"]);
        let mut list: Vec<Instance> = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let key = kv["key"].as_str().and_then(unb64).unwrap_or_default();
            let value: Value = kv["value"]
                .as_str()
                .and_then(unb64)
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            let addr = value["addr"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&key[self.key.len().min(key.len())..]).into_owned()
                });
            if validate_addr(&addr).is_err() {
                continue; // someone else's key under our prefix
            }
            let mut i = Instance::new(addr);
            i.weight = value["weight"]
                .as_u64()
                .map_or(1, |w| w.clamp(1, 10_000) as u32);
            if let Some(meta) = value["meta"].as_object() {
                i.meta = meta
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
            }
            // Written by a front-end (`serve --etcd`) drained through it:
            // listed, never picked, as from a registry.
            if let Some(status) = value["status"].as_str().and_then(|s| s.parse().ok()) {
                i.status = status;
            }
            list.push(i);
        }
        list.sort_by(|a, b| a.addr.cmp(&b.addr));
        Ok(Fetched {
            instances: list,
            index: revision,
            recovering: None,
        })
    }

    /// Blocks until an event after `rev` arrives, the stream ends or `wait`
    /// passes; the caller lists again in every case but an error.
    fn wait_event(&self, rev: u64, wait: Duration) -> Result<()> {
        let create = json!({
            "key": b64(&self.key), "range_end": b64(&self.end),
            "start_revision": (rev + 1).to_string(),
        });
        let mut stream = self.etcd.watch(&self.watch_agent, &create, wait)?;
        while let Some(msg) = stream.next() {
            match msg {
                Ok(WatchMsg::Created | WatchMsg::Progress) => {}
                Ok(WatchMsg::Events(events)) => {
                    log::debug!("{}: {} events after {rev}", self.describe(), events.len());
                    return Ok(());
                }
                // The history after `rev` is gone: the caller lists again,
                // and the next watch starts after that listing's revision,
                // which no compaction up to now can reach.
                Ok(WatchMsg::Canceled {
                    compact_revision: Some(c),
                    ..
                }) => {
                    log::info!(
                        "etcd compacted its history to revision {c}, past the watch of {} from \
                         {}; listing again",
                        self.describe(),
                        rev + 1
                    );
                    return Ok(());
                }
                Ok(WatchMsg::Canceled { reason, .. }) => {
                    return Err(Error::Status {
                        url: stream.url().to_string(),
                        status: 503,
                        reason: format!("etcd cancelled the watch: {reason}"),
                    });
                }
                Err(e) => {
                    // A member that ended the watch with an error (no
                    // leader, shutting down) is not asked first next time.
                    self.etcd.avoid(stream.endpoint());
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/regcenter/arith/"), b"/regcenter/arith0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn keys() {
        assert_eq!(
            key_of("/regcenter/", "arith", "tcp@a:1"),
            "/regcenter/arith/tcp@a:1"
        );
        assert_eq!(
            int(&json!("4111120205240231178")),
            Some(4_111_120_205_240_231_178)
        );
    }

    #[test]
    fn versions() {
        let v = |server: &str, cluster: &str| {
            check_version(
                "http://e/version",
                &json!({ "etcdserver": server, "etcdcluster": cluster }),
            )
        };
        assert!(v("3.4.23", "3.4.0").is_ok());
        assert!(v("3.5.9", "3.5.0").is_ok());
        assert!(v("3.10.1", "3.10.0").is_ok());
        let old = v("3.3.25", "3.3.0").unwrap_err();
        assert!(matches!(old, Error::InvalidConfig { .. }), "{old}");
        assert!(old.to_string().contains("3.3.25"), "{old}");
        // A member of 3.4 in a cluster still at 3.3 (an upgrade half done).
        assert!(v("3.4.23", "3.3.0").is_err());
        assert!(matches!(
            check_version("http://e/version", &json!({ "version": "1" })),
            Err(Error::BadResponse { .. })
        ));
    }
}
