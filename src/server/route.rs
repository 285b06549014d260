//! Routes: a pure function from our request type to our response type, so
//! every status code is testable without a socket. tiny_http stays behind
//! `server/http/`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::protocol::HEADER_UDP;
use crate::protocol::{
    HEADER_INDEX, HEADER_META, HEADER_RECOVERING, HEADER_SERVER, HEADER_SERVERS, HEADER_STATUS,
    HEADER_TTL, HEADER_WEIGHT, MAX_HEADER_VALUE, Status, format_duration, parse_duration,
    parse_meta, parse_meta_param, validate_service,
};
use crate::registry::{Delta, EntryInfo, Listing, PutOptions, Registry};

/// The request methods the routes tell apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Head,
    Post,
    Delete,
    Other(String),
}

/// What the routes need of a request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: Method,
    /// The raw request target: path and query, not percent-decoded.
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response body; listings are shared with the registry, not copied.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Empty,
    Text(String),
    Listing(Arc<Listing>),
}

impl Body {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Empty => b"",
            Body::Text(s) => s.as_bytes(),
            Body::Listing(l) => l.text().as_bytes(),
        }
    }
}

/// What the routes answer.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Body,
}

impl Response {
    fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// A plain-text answer of one line; every error carries one.
    pub(crate) fn text(status: u16, line: impl Into<String>) -> Response {
        let mut body = line.into();
        body.push('\n');
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: Body::Text(body),
        }
    }

    /// A 2xx answer with a body of the given type.
    pub(crate) fn with_body(status: u16, content_type: &str, body: String) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: Body::Text(body),
        }
    }

    /// The same answer, asking the client to retry after `secs` seconds.
    pub(crate) fn with_retry_after(self, secs: u32) -> Response {
        self.with_header("Retry-After", secs.to_string())
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The value of a header, by case-insensitive name.
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Settings the routes read.
#[derive(Debug, Clone)]
pub(crate) struct RouteConfig {
    /// Base path without a trailing slash, e.g. `/myRPC/registry`.
    pub(crate) path: String,
    /// Bearer token that POST and DELETE need, if any.
    pub(crate) token: Option<String>,
    /// Whether GETs of listings need the token too.
    pub(crate) protect_reads: bool,
    /// The address the server listens on: the node's in Consul answers.
    pub(crate) local_ip: std::net::IpAddr,
    /// The port of UDP renewals, advertised in POST answers, when on.
    pub(crate) udp_port: Option<u16>,
    /// The store shared with other front-ends (`serve --etcd`), which
    /// takes every write; `None`: the table is this registry's own.
    pub(crate) shared: Option<Arc<super::shared::Inner>>,
}

impl RouteConfig {
    /// 401 unless the request carries the token (when one is set).
    pub(crate) fn authorize(&self, req: &Request, write: bool) -> Result<(), Response> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if !write && !self.protect_reads {
            return Ok(());
        }
        // The scheme is case-insensitive and followed by one or more spaces
        // (RFC 7235 §2.1).
        let given = req
            .header("Authorization")
            .and_then(|h| h.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("the bearer token is wrong")),
            None => Err(unauthorized(
                "this registry needs Authorization: Bearer <token>",
            )),
        }
    }
}

fn unauthorized(reason: &str) -> Response {
    Response::text(401, reason).with_header("WWW-Authenticate", "Bearer")
}

/// Compares in time independent of where the inputs differ, so the token
/// cannot be guessed byte by byte from response times (only its length
/// shows).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Answers one request. A panic inside is answered with 500, so a bug in a
/// route cannot take a worker down.
pub(crate) fn dispatch(reg: &Registry, cfg: &RouteConfig, req: &Request) -> Outcome {
    catch_unwind(AssertUnwindSafe(|| route(reg, cfg, req))).unwrap_or_else(|_| {
        log::error!("route panicked on {:?} {}", req.method, req.url);
        Response::text(
            500,
            "internal error: the request was not applied; report this bug",
        )
        .into()
    })
}

/// Answers one request now, a long-poll included.
#[cfg(test)]
pub(crate) fn handle(reg: &Registry, cfg: &RouteConfig, req: &Request) -> Response {
    match dispatch(reg, cfg, req) {
        Outcome::Answer(r) => r,
        Outcome::Park(w) => render(reg, &w.service, w.format, &w.filter),
    }
}

fn route(reg: &Registry, cfg: &RouteConfig, req: &Request) -> Outcome {
    let (path, query) = req.url.split_once('?').unwrap_or((&req.url, ""));
    if path == "/healthz" {
        return match req.method {
            // Still 200: a load balancer keeps sending reads, which are
            // served from the last state read (X-Myrpc-Degraded says so).
            Method::Get | Method::Head if cfg.shared.as_ref().is_some_and(|s| s.degraded()) => {
                Response::text(200, "degraded: etcd unreachable").into()
            }
            Method::Get | Method::Head => Response::text(200, "ok").into(),
            _ => method_not_allowed("GET").into(),
        };
    }
    let service = if path == cfg.path {
        ""
    } else {
        match path
            .strip_prefix(cfg.path.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(rest) if !rest.is_empty() => rest,
            _ => return other_readers(reg, cfg, req, path, query),
        }
    };
    if let Err(e) = validate_service(service) {
        return Response::text(400, e.to_string()).into();
    }
    let write = matches!(req.method, Method::Post | Method::Delete);
    if let Err(r) = cfg.authorize(req, write) {
        return r.into();
    }
    match req.method {
        Method::Get | Method::Head => list(reg, cfg, service, query, req.header("Accept")),
        Method::Post => register(reg, cfg, service, req).into(),
        Method::Delete => deregister(reg, cfg, service, req).into(),
        Method::Other(_) => method_not_allowed("GET, POST, DELETE").into(),
    }
}

/// Paths outside the base path: Prometheus' HTTP discovery and the Consul
/// API (`prom.rs`, `consul.rs`); the base path comes first, so a base path
/// under `/v1` keeps the protocol.
fn other_readers(
    reg: &Registry,
    cfg: &RouteConfig,
    req: &Request,
    path: &str,
    query: &str,
) -> Outcome {
    if path == super::prom::PATH {
        return super::prom::targets(reg, cfg, req, query).into();
    }
    if path == "/v1" || path.starts_with("/v1/") {
        return super::consul::route(reg, cfg, req, path, query);
    }
    Response::text(404, format!("no such path {}", clip(path))).into()
}

pub(crate) fn method_not_allowed(allow: &str) -> Response {
    Response::text(405, format!("method not allowed; use {allow}")).with_header("Allow", allow)
}

/// Keeps echoed client input short in one-line reasons.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// How a listing is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The seed's: `X-Myrpc-Servers` and an empty body.
    Seed,
    /// One address per line in the body.
    Text,
    /// `{"service", "index", "recovering", "servers": [{addr, weight, status, meta, expires_in_ms}]}`.
    Json,
    /// JSON asked with `delta=1`: the changes since `since`
    /// (`"delta": true`, `"since"`, `"added"`, `"changed"`, `"removed"`)
    /// when the registry can tell them, else the JSON listing with
    /// `"delta": false`; `None`: the listing in any case (no index, a
    /// filter, or asked while the registry recovered).
    Delta { since: Option<u64> },
    /// A Consul API read (`consul.rs`).
    Consul(super::consul::View),
}

/// Default and largest wait of a long-poll (docs/PROTOCOL.md, "Long-poll").
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(600);

/// The `meta.KEY=VALUE` pairs of a listing, sorted and without repeats (so
/// that equal filters compare equal); empty: no filter.
pub(crate) type Filter = Arc<[(String, String)]>;

/// A long-poll to park until its listing's index passes `index`: the
/// service's, or with a filter the filtered listing's
/// ([`Registry::index_matching`]).
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub(crate) service: String,
    pub(crate) index: u64,
    pub(crate) wait: Duration,
    pub(crate) format: Format,
    pub(crate) filter: Filter,
}

/// The index a long-poll of `service` with `filter` waits to see pass its
/// own.
pub(crate) fn current_index(reg: &Registry, service: &str, filter: &[(String, String)]) -> u64 {
    if filter.is_empty() {
        reg.index(service)
    } else {
        reg.index_matching(service, filter)
    }
}

/// What to do with a request: answer it now, or park it.
#[derive(Debug)]
pub(crate) enum Outcome {
    Answer(Response),
    Park(Watch),
}

impl From<Response> for Outcome {
    fn from(r: Response) -> Outcome {
        Outcome::Answer(r)
    }
}

fn list(
    reg: &Registry,
    cfg: &RouteConfig,
    service: &str,
    query: &str,
    accept: Option<&str>,
) -> Outcome {
    let mut format = if accept.is_some_and(|a| a.contains("application/json")) {
        Format::Json
    } else {
        Format::Seed
    };
    let (mut index, mut wait, mut delta) = (None, None, false);
    let mut filter = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match parse_meta_param(pair) {
            Some(Ok(kv)) => {
                filter.push(kv);
                continue;
            }
            Some(Err(reason)) => return Response::text(400, reason).into(),
            None => {}
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "format" => {
                format = match v {
                    "seed" | "" => Format::Seed,
                    "text" => Format::Text,
                    "json" => Format::Json,
                    other => {
                        return Response::text(
                            400,
                            format!(
                                "unknown format {:?}; use text, json or leave it out",
                                clip(other)
                            ),
                        )
                        .into();
                    }
                }
            }
            "index" => match v.parse::<u64>() {
                Ok(n) => index = Some(n),
                Err(_) => {
                    return Response::text(
                        400,
                        format!(
                            "invalid index {:?}: use the X-Myrpc-Index of the last answer",
                            clip(v)
                        ),
                    )
                    .into();
                }
            },
            "delta" => match v {
                "1" | "true" => delta = true,
                "0" | "false" | "" => delta = false,
                other => {
                    return Response::text(
                        400,
                        format!(
                            "invalid delta {:?}: use delta=1 or leave it out",
                            clip(other)
                        ),
                    )
                    .into();
                }
            },
            "wait" => match parse_duration(v) {
                Ok(d) => wait = Some(d.min(MAX_WAIT)),
                Err(e) => return Response::text(400, format!("invalid wait: {e}")).into(),
            },
            // Other parameters are ignored, as the seed ignores the query.
            _ => {}
        }
    }
    filter.sort_unstable();
    filter.dedup();
    let filter: Filter = filter.into();
    if delta && format == Format::Json {
        // Filtered deltas are not kept (a change log per filter would be);
        // and an index asked while the registry recovers may come from
        // before its restart, where a delta would be against a list that
        // registry never had (docs/PROTOCOL.md, "Delta watch").
        let since = index.filter(|_| filter.is_empty() && !reg.recovering());
        format = Format::Delta { since };
    }
    if let Some(index) = index {
        let wait = wait.unwrap_or(DEFAULT_WAIT);
        // An index from another front-end of the same store may be ahead
        // of this one's.
        if let Some(shared) = &cfg.shared
            && !wait.is_zero()
        {
            shared.catch_up(service, &filter, index);
        }
        // Answer at once when the listing moved past the index, when the
        // index is from before a restart (beyond the counter), or when the
        // client asked not to wait.
        if current_index(reg, service, &filter) <= index
            && index <= reg.counter()
            && !wait.is_zero()
        {
            return Outcome::Park(Watch {
                service: service.to_string(),
                index,
                wait,
                format,
                filter,
            });
        }
    }
    render(reg, service, format, &filter).into()
}

/// The listing of `service` in `format`, of the entries whose metadata
/// holds every pair of `filter` (all of them when it is empty). While the
/// registry is recovering, every format says so.
pub(crate) fn render(
    reg: &Registry,
    service: &str,
    format: Format,
    filter: &[(String, String)],
) -> Response {
    if let Format::Consul(view) = format {
        return super::consul::render(reg, service, view);
    }
    // Read before the listing is taken: recovering only ends, so a listing
    // taken while the registry recovered is never said to be complete.
    let recovering = reg.recovering();
    let r = listing_of(reg, service, format, filter, recovering);
    match recovering {
        true => r.with_header(HEADER_RECOVERING, "true"),
        false => r,
    }
}

fn listing_of(
    reg: &Registry,
    service: &str,
    format: Format,
    filter: &[(String, String)],
    recovering: bool,
) -> Response {
    if !filter.is_empty() {
        return render_matching(reg, service, format, filter, recovering);
    }
    if let Format::Delta { since: Some(since) } = format
        && !recovering
        && let Some(delta) = reg.delta(service, since)
    {
        return json_delta(service, since, &delta);
    }
    if let Format::Json | Format::Delta { .. } = format {
        let delta = matches!(format, Format::Delta { .. });
        let (index, entries) = reg.instances(service);
        return json_listing(service, index, recovering, delta, &entries);
    }
    let listing = reg.listing(service);
    let joined = listing.joined().to_string();
    addr_listing(format, listing.index(), joined, Body::Listing(listing))
}

/// The seed's listing or the text one (any other `format`) at `index`, of
/// the addresses `joined` by commas and in `text` one a line.
fn addr_listing(format: Format, index: u64, joined: String, text: Body) -> Response {
    match format {
        // The seed's answer: the list in a header and an empty body, because
        // the seed's Go clients never close response bodies (docs/PROTOCOL.md).
        Format::Seed => Response::empty(200)
            .with_header(HEADER_SERVERS, joined)
            .with_header(HEADER_INDEX, index.to_string()),
        _ => Response {
            status: 200,
            headers: vec![
                ("Content-Type", "text/plain; charset=utf-8".into()),
                (HEADER_INDEX, index.to_string()),
            ],
            body: text,
        },
    }
}

/// A filtered listing: printed per request, where an unfiltered one is
/// shared ([`Registry::listing`]), since filters are many and each
/// listing of one is small.
fn render_matching(
    reg: &Registry,
    service: &str,
    format: Format,
    filter: &[(String, String)],
    recovering: bool,
) -> Response {
    let (index, entries) = reg.matching(service, filter);
    match format {
        // Answered before any filter is read (`render`).
        Format::Consul(view) => super::consul::render(reg, service, view),
        Format::Json => json_listing(service, index, recovering, false, &entries),
        Format::Delta { .. } => json_listing(service, index, recovering, true, &entries),
        Format::Seed | Format::Text => {
            // Draining entries are left out of the seed's and text listings,
            // as in unfiltered ones.
            let up: Vec<&str> = entries
                .iter()
                .filter(|e| e.status == Status::Up)
                .map(|e| e.addr.as_str())
                .collect();
            let mut text = String::new();
            for a in &up {
                text.push_str(a);
                text.push('\n');
            }
            addr_listing(format, index, up.join(","), Body::Text(text))
        }
    }
}

/// The JSON listing of `entries` at `index`; `asked_delta`: answering a
/// `delta=1` request, so it says `"delta": false`.
fn json_listing(
    service: &str,
    index: u64,
    recovering: bool,
    asked_delta: bool,
    entries: &[EntryInfo],
) -> Response {
    let mut body = String::with_capacity(64 + entries.len() * 96);
    body.push_str("{\"service\":");
    json_str(&mut body, service);
    body.push_str(&format!(",\"index\":{index},\"recovering\":{recovering}"));
    if asked_delta {
        body.push_str(",\"delta\":false");
    }
    body.push_str(",\"servers\":");
    json_servers(&mut body, entries);
    body.push_str("}\n");
    json_answer(index, body)
}

/// The JSON answer of a delta long-poll: what changed since `since`.
/// Never while the registry recovers (`render`), so `recovering` is false.
fn json_delta(service: &str, since: u64, d: &Delta) -> Response {
    let rows = d.added.len() + d.changed.len();
    let mut body = String::with_capacity(128 + rows * 96 + d.removed.len() * 32);
    body.push_str("{\"service\":");
    json_str(&mut body, service);
    body.push_str(&format!(
        ",\"index\":{},\"recovering\":false,\"delta\":true,\"since\":{since},\"added\":",
        d.index
    ));
    json_servers(&mut body, &d.added);
    body.push_str(",\"changed\":");
    json_servers(&mut body, &d.changed);
    body.push_str(",\"removed\":[");
    for (i, a) in d.removed.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        json_str(&mut body, a);
    }
    body.push_str("]}\n");
    json_answer(d.index, body)
}

fn json_answer(index: u64, body: String) -> Response {
    Response {
        status: 200,
        headers: vec![
            ("Content-Type", "application/json".into()),
            (HEADER_INDEX, index.to_string()),
        ],
        body: Body::Text(body),
    }
}

/// Appends `entries` as a JSON array of server objects.
fn json_servers(body: &mut String, entries: &[EntryInfo]) {
    body.push('[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"addr\":");
        json_str(body, &e.addr);
        body.push_str(&format!(
            ",\"weight\":{},\"status\":\"{}\",\"meta\":{{",
            e.weight, e.status
        ));
        for (j, (k, v)) in e.meta.iter().enumerate() {
            if j > 0 {
                body.push(',');
            }
            json_str(body, k);
            body.push(':');
            json_str(body, v);
        }
        match e.expires_in {
            Some(d) => body.push_str(&format!("}},\"expires_in_ms\":{}}}", d.as_millis())),
            None => body.push_str("},\"expires_in_ms\":null}"),
        }
    }
    body.push(']');
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reads a header the registry interprets, refusing absurd sizes up front.
fn bounded_header<'r>(req: &'r Request, name: &str) -> Result<Option<&'r str>, Response> {
    match req.header(name) {
        Some(v) if v.len() > MAX_HEADER_VALUE => Err(Response::text(
            400,
            format!("{name} header is longer than {MAX_HEADER_VALUE} bytes"),
        )),
        v => Ok(v.map(str::trim)),
    }
}

fn required_addr(req: &Request) -> Result<&str, Response> {
    match bounded_header(req, HEADER_SERVER)? {
        Some(a) if !a.is_empty() => Ok(a),
        _ => Err(Response::text(
            400,
            format!(
                "missing {HEADER_SERVER} header; set it to the server's address, e.g. tcp@127.0.0.1:7001"
            ),
        )),
    }
}

fn put_options(req: &Request) -> Result<PutOptions, Response> {
    let bad = |e: Error| Response::text(400, e.to_string());
    let mut opts = PutOptions::new();
    if let Some(ttl) = bounded_header(req, HEADER_TTL)? {
        let ttl: Duration = parse_duration(ttl).map_err(bad)?;
        opts = opts.ttl(ttl);
    }
    if let Some(w) = bounded_header(req, HEADER_WEIGHT)? {
        let weight = w.parse::<u32>().ok().filter(|w| (1..=10_000).contains(w));
        let Some(weight) = weight else {
            return Err(Response::text(
                400,
                format!(
                    "invalid {HEADER_WEIGHT} {:?}: use a whole number from 1 to 10000",
                    clip(w)
                ),
            ));
        };
        opts = opts.weight(weight);
    }
    if let Some(status) = bounded_header(req, HEADER_STATUS)? {
        // Exactly the wire names: anything else is refused rather than
        // guessed at, since a drain that silently did not happen keeps
        // traffic flowing to a server that is going away.
        let Ok(status) = status.parse::<Status>() else {
            return Err(Response::text(
                400,
                format!(
                    "invalid {HEADER_STATUS} {:?}: use up or draining, or leave it out to keep the status in force",
                    clip(status)
                ),
            ));
        };
        opts = opts.status(status);
    }
    if let Some(meta) = bounded_header(req, HEADER_META)? {
        for (k, v) in parse_meta(meta)
            .map_err(|reason| Response::text(400, format!("invalid {HEADER_META}: {reason}")))?
        {
            opts = opts.meta(k, v);
        }
    }
    Ok(opts)
}

fn register(reg: &Registry, cfg: &RouteConfig, service: &str, req: &Request) -> Response {
    let addr = match required_addr(req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let opts = match put_options(req) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let put = match &cfg.shared {
        Some(shared) => shared.put(service, addr, &opts),
        None => reg.put_with(service, addr, &opts),
    };
    match put {
        Ok(put) => {
            let r = Response::empty(200)
                .with_header(HEADER_TTL, format_duration(put.ttl))
                .with_header(HEADER_INDEX, put.index.to_string());
            match cfg.udp_port {
                // Renew by datagram from now on (`udp.rs`).
                Some(port) => r.with_header(HEADER_UDP, port.to_string()),
                None => r,
            }
        }
        Err(e) => refused(e),
    }
}

/// The answer to a write that failed: 503 when it may succeed later (the
/// registry is full, or its store cannot be reached), else 400.
fn refused(e: Error) -> Response {
    match e {
        Error::Full { .. } | Error::Unreachable { .. } | Error::Status { .. } => {
            Response::text(503, e.to_string()).with_header("Retry-After", "5")
        }
        e => Response::text(400, e.to_string()),
    }
}

fn deregister(reg: &Registry, cfg: &RouteConfig, service: &str, req: &Request) -> Response {
    let addr = match required_addr(req) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let removed = match &cfg.shared {
        Some(shared) => shared.remove(service, addr),
        None => reg.remove(service, addr),
    };
    match removed {
        Ok(true) => Response::text(200, "removed"),
        Ok(false) => Response::text(
            404,
            format!("{} is not registered in service {service:?}", clip(addr)),
        ),
        Err(e) => refused(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RouteConfig {
        RouteConfig {
            path: "/myRPC/registry".into(),
            token: None,
            protect_reads: false,
            local_ip: [127, 0, 0, 1].into(),
            udp_port: None,
            shared: None,
        }
    }

    #[test]
    fn writes_need_the_token_reads_only_when_protected() {
        let reg = Registry::new();
        let mut cfg = cfg();
        cfg.token = Some("s3cret".into());
        let post = |auth: Option<&str>, cfg: &RouteConfig| {
            let mut h = vec![("X-Myrpc-Server", "tcp@a:1")];
            if let Some(a) = auth {
                h.push(("Authorization", a));
            }
            handle(&reg, cfg, &req(Method::Post, "/myRPC/registry", &h)).status
        };
        assert_eq!(post(None, &cfg), 401);
        assert_eq!(post(Some("Bearer wrong!"), &cfg), 401);
        assert_eq!(post(Some("Basic s3cret"), &cfg), 401);
        assert!(reg.is_empty());
        assert_eq!(post(Some("Bearer s3cret"), &cfg), 200);
        let get =
            |cfg: &RouteConfig| handle(&reg, cfg, &req(Method::Get, "/myRPC/registry", &[])).status;
        assert_eq!(get(&cfg), 200);
        cfg.protect_reads = true;
        assert_eq!(get(&cfg), 401);
        assert_eq!(
            handle(&reg, &cfg, &req(Method::Get, "/healthz", &[])).status,
            200
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    fn req(method: Method, url: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method,
            url: url.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn call(reg: &Registry, method: Method, url: &str, headers: &[(&str, &str)]) -> Response {
        handle(reg, &cfg(), &req(method, url, headers))
    }

    fn body(r: &Response) -> &str {
        std::str::from_utf8(r.body.as_bytes()).unwrap()
    }

    #[test]
    fn seed_get_answers_the_header_and_an_empty_body() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        reg.put("", "tcp@b").unwrap();
        reg.put("", "tcp@a").unwrap();
        let r = call(&reg, Method::Get, "/myRPC/registry", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-myrpc-servers"), Some("tcp@a,tcp@b"));
        assert_eq!(
            r.header("x-myrpc-index"),
            Some(reg.index("").to_string().as_str())
        );
        assert!(r.body.as_bytes().is_empty());
    }

    #[test]
    fn text_format_answers_a_body_without_the_seed_header() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        reg.put("arith", "tcp@a").unwrap();
        let r = call(&reg, Method::Get, "/myRPC/registry/arith?format=text", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(body(&r), "tcp@a\n");
        assert!(r.header(HEADER_SERVERS).is_none());
        assert!(r.header(HEADER_INDEX).is_some());
        let r = call(&reg, Method::Get, "/myRPC/registry?format=xml", &[]);
        assert_eq!(r.status, 400);
    }

    #[test]
    fn post_registers_and_reports_the_ttl_in_force() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry",
            &[("X-Myrpc-Server", "tcp@a")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header(HEADER_TTL), Some("5s"));
        assert!(r.body.as_bytes().is_empty());
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry/s",
            &[("x-myrpc-server", "tcp@b"), ("X-Myrpc-Ttl", "1m30s")],
        );
        assert_eq!(r.header(HEADER_TTL), Some("1m30s"));
        assert_eq!(reg.alive(""), ["tcp@a"]);
        assert_eq!(reg.alive("s"), ["tcp@b"]);
    }

    #[test]
    fn bad_input_is_a_400_with_a_reason_and_changes_nothing() {
        let reg = Registry::new();
        let long = "a".repeat(300);
        type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (Method::Post, "/myRPC/registry", vec![]),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a,b")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a\u{1}b")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a b")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", &long)],
            ),
            (
                Method::Post,
                "/myRPC/registry/a.b!",
                vec![("X-Myrpc-Server", "a")],
            ),
            (
                Method::Post,
                "/myRPC/registry/..",
                vec![("X-Myrpc-Server", "a")],
            ),
            (
                Method::Post,
                "/myRPC/registry/../x",
                vec![("X-Myrpc-Server", "a")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Ttl", "-5s")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Ttl", "5x")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Ttl", "9999999999h")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Weight", "0")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Weight", "10001")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Weight", "abc")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Meta", "k=%zz")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Status", "sleeping")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Status", "Draining")],
            ),
            (
                Method::Post,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a"), ("X-Myrpc-Status", "")],
            ),
            (Method::Delete, "/myRPC/registry", vec![]),
            (
                Method::Delete,
                "/myRPC/registry",
                vec![("X-Myrpc-Server", "a,b")],
            ),
        ];
        for (method, url, headers) in cases {
            let r = call(&reg, method.clone(), url, &headers);
            assert_eq!(r.status, 400, "{method:?} {url} {headers:?}");
            assert!(
                body(&r).ends_with('\n') && body(&r).lines().count() == 1,
                "{}",
                body(&r)
            );
        }
        assert!(reg.is_empty());
        assert_eq!(reg.counter(), 0);
    }

    #[test]
    fn delete_answers_200_then_404() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        reg.put("s", "tcp@a").unwrap();
        let h = [("X-Myrpc-Server", "tcp@a")];
        assert_eq!(
            call(&reg, Method::Delete, "/myRPC/registry/s", &h).status,
            200
        );
        assert_eq!(
            call(&reg, Method::Delete, "/myRPC/registry/s", &h).status,
            404
        );
    }

    #[test]
    fn other_methods_and_paths() {
        let reg = Registry::new();
        let r = call(&reg, Method::Other("PUT".into()), "/myRPC/registry", &[]);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, POST, DELETE"));
        assert_eq!(call(&reg, Method::Get, "/nope", &[]).status, 404);
        assert_eq!(call(&reg, Method::Get, "/myRPC/registryx", &[]).status, 404);
        assert_eq!(call(&reg, Method::Get, "/myRPC/registry/", &[]).status, 404);
        let r = call(&reg, Method::Get, "/healthz", &[]);
        assert_eq!((r.status, body(&r)), (200, "ok\n"));
    }

    #[test]
    fn weight_and_meta_are_applied() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry",
            &[
                ("X-Myrpc-Server", "a"),
                ("X-Myrpc-Weight", "7"),
                ("X-Myrpc-Meta", "zone=eu+west&v=1%2E2"),
            ],
        );
        assert_eq!(r.status, 200);
        let e = &reg.entries()[0];
        assert_eq!(e.weight, 7);
        assert_eq!(e.meta.get("zone").map(String::as_str), Some("eu west"));
        assert_eq!(e.meta.get("v").map(String::as_str), Some("1.2"));
    }

    #[test]
    fn a_full_registry_answers_503_with_retry_after() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .max_entries(1)
            .build()
            .unwrap();
        reg.put("", "a").unwrap();
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry",
            &[("X-Myrpc-Server", "b")],
        );
        assert_eq!(r.status, 503);
        assert!(r.header("retry-after").is_some());
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry",
            &[("X-Myrpc-Server", "a")],
        );
        assert_eq!(r.status, 200, "renewals are still accepted");
    }

    fn post_status(reg: &Registry, addr: &str, status: Option<&str>) -> Response {
        let mut h = vec![("X-Myrpc-Server", addr)];
        if let Some(st) = status {
            h.push(("X-Myrpc-Status", st));
        }
        call(reg, Method::Post, "/myRPC/registry/s", &h)
    }

    #[test]
    fn a_draining_server_is_left_out_of_seed_and_text_listings_but_shown_in_json() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        assert_eq!(post_status(&reg, "tcp@a", None).status, 200);
        assert_eq!(post_status(&reg, "tcp@b", None).status, 200);
        let before = reg.index("s");
        let r = post_status(&reg, "tcp@a", Some("draining"));
        assert_eq!(r.status, 200);
        let drained = reg.index("s");
        assert!(drained > before, "a status change is a change");
        assert_eq!(r.header(HEADER_INDEX), Some(drained.to_string().as_str()));
        let seed = call(&reg, Method::Get, "/myRPC/registry/s", &[]);
        assert_eq!(seed.header(HEADER_SERVERS), Some("tcp@b"));
        let text = call(&reg, Method::Get, "/myRPC/registry/s?format=text", &[]);
        assert_eq!(body(&text), "tcp@b\n");
        let json = call(&reg, Method::Get, "/myRPC/registry/s?format=json", &[]);
        let v: serde_json::Value = serde_json::from_str(body(&json)).unwrap();
        assert_eq!(v["servers"][0]["addr"], "tcp@a");
        assert_eq!(v["servers"][0]["status"], "draining");
        assert_eq!(v["servers"][1]["status"], "up");
        assert_eq!(v["servers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_status_is_sticky_across_posts_without_the_header() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        post_status(&reg, "tcp@a", Some("draining"));
        assert!(reg.alive("s").is_empty(), "a new entry may start draining");
        let drained = reg.index("s");
        assert_eq!(post_status(&reg, "tcp@a", None).status, 200);
        assert_eq!(post_status(&reg, "tcp@a", Some("draining")).status, 200);
        assert!(reg.alive("s").is_empty());
        assert_eq!(reg.index("s"), drained, "renewals with the same status");
        // A refused status changes nothing, not even the weight beside it.
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry/s",
            &[
                ("X-Myrpc-Server", "tcp@a"),
                ("X-Myrpc-Status", "UP"),
                ("X-Myrpc-Weight", "9"),
            ],
        );
        assert_eq!(r.status, 400);
        assert!(body(&r).contains("X-Myrpc-Status"), "{}", body(&r));
        assert_eq!(reg.entries()[0].weight, 1);
        assert_eq!(reg.index("s"), drained);
        assert_eq!(post_status(&reg, "tcp@a", Some("up")).status, 200);
        assert_eq!(reg.alive("s"), ["tcp@a"]);
        assert!(reg.index("s") > drained);
        // A new registration without the header is up.
        post_status(&reg, "tcp@b", None);
        assert_eq!(reg.alive("s"), ["tcp@a", "tcp@b"]);
    }

    fn zoned(reg: &Registry, addr: &str, meta: &str) {
        let h = [("X-Myrpc-Server", addr), ("X-Myrpc-Meta", meta)];
        assert_eq!(call(reg, Method::Post, "/myRPC/registry/s", &h).status, 200);
    }

    #[test]
    fn a_filter_without_a_value_or_key_is_a_400_with_one_line() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        zoned(&reg, "tcp@a", "zone=eu");
        for query in [
            "meta.zone",
            "meta.=eu",
            "meta.",
            "meta.zone=eu&meta.v",
            "meta.zone=%zz",
            "meta.zone=eu&format=json&meta.=x",
            "meta.zone&index=1&wait=10s",
        ] {
            let r = call(
                &reg,
                Method::Get,
                &format!("/myRPC/registry/s?{query}"),
                &[],
            );
            assert_eq!(r.status, 400, "{query}");
            assert!(
                body(&r).ends_with('\n') && body(&r).lines().count() == 1,
                "{query}: {}",
                body(&r)
            );
            assert!(r.header(HEADER_SERVERS).is_none());
        }
    }

    #[test]
    fn filters_match_labels_exactly_in_every_format() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        zoned(&reg, "tcp@a", "zone=eu&v=1");
        zoned(&reg, "tcp@b", "zone=us");
        zoned(&reg, "tcp@c", "zone=eu&v=2");
        zoned(&reg, "tcp@d", "zone=eu+west");
        zoned(&reg, "tcp@e", "zone=eu");
        reg.put("s", "tcp@f").unwrap();
        reg.put_with(
            "s",
            "tcp@e",
            &PutOptions::new()
                .meta("zone", "eu")
                .status(Status::Draining),
        )
        .unwrap();
        let get = |query: &str| {
            call(
                &reg,
                Method::Get,
                &format!("/myRPC/registry/s?{query}"),
                &[],
            )
        };
        let seed = |query: &str| get(query).header(HEADER_SERVERS).unwrap().to_string();
        assert_eq!(seed("meta.zone=eu"), "tcp@a,tcp@c", "e is draining");
        assert_eq!(seed("meta.zone=eu&meta.v=1"), "tcp@a");
        assert_eq!(seed("meta.v=1&meta.zone=eu&meta.v=1"), "tcp@a");
        assert_eq!(seed("meta.zone=eu&meta.zone=us"), "");
        assert_eq!(seed("meta.zone=eu%20west"), "tcp@d");
        assert_eq!(seed("meta.z%6Fne=eu+west"), "tcp@d", "KEY is decoded too");
        assert_eq!(seed("meta.zone=EU"), "", "values match exactly");
        assert_eq!(seed("meta.none=x"), "");
        assert_eq!(seed(""), "tcp@a,tcp@b,tcp@c,tcp@d,tcp@f");
        assert_eq!(body(&get("meta.zone=eu&format=text")), "tcp@a\ntcp@c\n");
        let json = get("format=json&meta.zone=eu");
        let v: serde_json::Value = serde_json::from_str(body(&json)).unwrap();
        let addrs: Vec<(&str, &str)> = v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["addr"].as_str().unwrap(), s["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            addrs,
            [("tcp@a", "up"), ("tcp@c", "up"), ("tcp@e", "draining")]
        );
        // Every format answers the filtered listing's index.
        let index = reg.index_matching("s", &[("zone".into(), "eu".into())]);
        for query in [
            "meta.zone=eu",
            "meta.zone=eu&format=text",
            "meta.zone=eu&format=json",
        ] {
            assert_eq!(
                get(query).header(HEADER_INDEX),
                Some(index.to_string().as_str())
            );
        }
        assert_eq!(v["index"], index);
    }

    #[test]
    fn a_filtered_long_poll_parks_until_its_own_listing_moves() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        zoned(&reg, "tcp@a", "zone=eu");
        zoned(&reg, "tcp@b", "zone=us");
        let n = call(&reg, Method::Get, "/myRPC/registry/s?meta.zone=eu", &[])
            .header(HEADER_INDEX)
            .unwrap()
            .to_string();
        let poll = |n: &str| {
            let url = format!("/myRPC/registry/s?meta.zone=eu&index={n}&wait=30s");
            dispatch(&reg, &cfg(), &req(Method::Get, &url, &[]))
        };
        assert!(
            matches!(poll(&n), Outcome::Park(w) if *w.filter == [("zone".to_string(), "eu".to_string())])
        );
        zoned(&reg, "tcp@b", "zone=us&v=2");
        zoned(&reg, "tcp@c", "zone=us");
        assert!(reg.index("s").to_string() != n);
        assert!(
            matches!(poll(&n), Outcome::Park(_)),
            "moved by another zone"
        );
        zoned(&reg, "tcp@c", "zone=eu");
        let Outcome::Answer(r) = poll(&n) else {
            panic!("not answered after a change in its zone");
        };
        assert_eq!(r.header(HEADER_SERVERS), Some("tcp@a,tcp@c"));
        let m = r.header(HEADER_INDEX).unwrap();
        assert!(m.parse::<u64>().unwrap() > n.parse::<u64>().unwrap());
        assert!(matches!(poll(m), Outcome::Park(_)));
    }

    fn json(r: &Response) -> serde_json::Value {
        serde_json::from_str(body(r)).unwrap()
    }

    fn addrs_of(v: &serde_json::Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["addr"].as_str().unwrap_or_else(|| s.as_str().unwrap()))
            .collect()
    }

    #[test]
    fn a_delta_long_poll_parks_and_answers_the_changes_since_its_index() {
        let reg = Registry::builder()
            .free_form_addresses(true)
            .build()
            .unwrap();
        zoned(&reg, "tcp@a", "zone=eu");
        zoned(&reg, "tcp@b", "zone=eu");
        zoned(&reg, "tcp@c", "zone=eu");
        let n = reg.index("s");
        let url = format!("/myRPC/registry/s?format=json&index={n}&wait=30s&delta=1");
        let poll = || dispatch(&reg, &cfg(), &req(Method::Get, &url, &[]));
        assert!(matches!(poll(), Outcome::Park(w) if w.format == Format::Delta { since: Some(n) }));
        zoned(&reg, "tcp@a", "zone=eu"); // a renewal: no change
        assert!(matches!(poll(), Outcome::Park(_)), "woken by a renewal");
        zoned(&reg, "tcp@b", "zone=us");
        call(
            &reg,
            Method::Delete,
            "/myRPC/registry/s",
            &[("X-Myrpc-Server", "tcp@c")],
        );
        zoned(&reg, "tcp@d", "zone=eu");
        let r = call(&reg, Method::Get, &url, &[]);
        assert_eq!(r.status, 200);
        let v = json(&r);
        let m = reg.index("s");
        assert_eq!(r.header(HEADER_INDEX), Some(m.to_string().as_str()));
        assert_eq!(
            (v["index"].as_u64(), v["since"].as_u64()),
            (Some(m), Some(n))
        );
        assert_eq!(
            (v["delta"].as_bool(), v["recovering"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(v["service"], "s");
        assert_eq!(addrs_of(&v["added"]), ["tcp@d"]);
        assert_eq!(addrs_of(&v["changed"]), ["tcp@b"]);
        assert_eq!(addrs_of(&v["removed"]), ["tcp@c"]);
        assert!(v.get("servers").is_none());
        // Full server objects, as in the listing.
        let b = &v["changed"][0];
        assert_eq!(
            (b["weight"].as_u64(), b["status"].as_str()),
            (Some(1), Some("up"))
        );
        assert_eq!(b["meta"]["zone"], "us");
        assert!(b["expires_in_ms"].as_u64().is_some());
        // Nothing since: an empty delta when the wait passes.
        let r = call(
            &reg,
            Method::Get,
            &format!("/myRPC/registry/s?format=json&index={m}&wait=0s&delta=1"),
            &[],
        );
        let v = json(&r);
        assert_eq!(
            (v["delta"].as_bool(), v["since"].as_u64()),
            (Some(true), Some(m))
        );
        for list in ["added", "changed", "removed"] {
            assert_eq!(v[list].as_array().unwrap().len(), 0, "{list}");
        }
        // Accept: application/json asks JSON too; delta=0 asks no delta.
        let r = call(
            &reg,
            Method::Get,
            &format!("/myRPC/registry/s?index={n}&delta=1"),
            &[("Accept", "application/json")],
        );
        assert_eq!(json(&r)["delta"], true);
        let r = call(
            &reg,
            Method::Get,
            &format!("/myRPC/registry/s?format=json&index={n}&delta=0"),
            &[],
        );
        assert!(json(&r).get("delta").is_none(), "as before");
        let r = call(
            &reg,
            Method::Get,
            "/myRPC/registry/s?format=json&index=1&delta=yes",
            &[],
        );
        assert_eq!(r.status, 400);
        assert!(body(&r).contains("delta=1"), "{}", body(&r));
    }

    #[test]
    fn a_delta_request_is_answered_in_full_when_no_delta_can_be_told() {
        let clock = crate::clock::ManualClock::new();
        let reg = Registry::builder()
            .free_form_addresses(true)
            .max_ttl(Duration::from_secs(30))
            .default_ttl(Duration::from_secs(30))
            .clock(clock.clone())
            .build()
            .unwrap();
        zoned(&reg, "tcp@a", "zone=eu");
        zoned(&reg, "tcp@b", "zone=us");
        let n = reg.index("s");
        zoned(&reg, "tcp@c", "zone=eu");
        let full = |query: &str| {
            let r = call(
                &reg,
                Method::Get,
                &format!("/myRPC/registry/s?{query}"),
                &[],
            );
            assert_eq!(r.status, 200, "{query}");
            let v = json(&r);
            assert_eq!(v["delta"], false, "{query}: {v}");
            assert!(v.get("since").is_none(), "{query}");
            addrs_of(&v["servers"])
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        };
        let all = ["tcp@a", "tcp@b", "tcp@c"];
        // No index to start from.
        assert_eq!(full("format=json&delta=1"), all);
        // Filtered: answered in full, filtered.
        assert_eq!(
            full(&format!(
                "format=json&meta.zone=eu&index={n}&wait=0s&delta=1"
            )),
            ["tcp@a", "tcp@c"]
        );
        // Beyond the counter: from before a restart.
        let beyond = reg.counter() + 5;
        assert_eq!(full(&format!("format=json&index={beyond}&delta=1")), all);
        // Past the service's index but not the counter: another registry's.
        reg.put("other", "tcp@x").unwrap();
        let past = reg.counter();
        assert_eq!(
            full(&format!("format=json&index={past}&wait=0s&delta=1")),
            all
        );
        // From before the change log's reach.
        for i in 0..2 * crate::registry::LOG_LIMIT {
            let weight = 1 + ((i + 1) % 2) as u32; // 1 at the end
            let opts = PutOptions::new().weight(weight).meta("zone", "eu");
            reg.put_with("s", "tcp@a", &opts).unwrap();
        }
        assert_eq!(full(&format!("format=json&index={n}&delta=1")), all);
        // While the registry recovers, even a recent index.
        let m = reg.index("s");
        reg.begin_recovery();
        let r = call(
            &reg,
            Method::Get,
            &format!("/myRPC/registry/s?format=json&index={m}&wait=30s&delta=1"),
            &[],
        );
        let v = json(&r);
        assert_eq!(
            (v["delta"].as_bool(), v["recovering"].as_bool()),
            (Some(false), Some(true))
        );
        let url = format!("/myRPC/registry/s?format=json&index={m}&wait=30s&delta=1");
        let parked = dispatch(&reg, &cfg(), &req(Method::Get, &url, &[]));
        let Outcome::Park(w) = parked else {
            panic!("not parked");
        };
        assert_eq!(
            w.format,
            Format::Delta { since: None },
            "parked while recovering"
        );
        clock.advance(Duration::from_secs(15));
        for (a, zone) in [
            ("tcp@a", "zone=eu"),
            ("tcp@b", "zone=us"),
            ("tcp@c", "zone=eu"),
        ] {
            zoned(&reg, a, zone); // renewals, kept past the recovery
        }
        assert_eq!(reg.index("s"), m);
        clock.advance(Duration::from_secs(15));
        // Recovered: deltas again; the one parked before still answers in
        // full.
        assert_eq!(
            json(&render(&reg, "s", w.format, &w.filter))["delta"],
            false
        );
        let r = call(
            &reg,
            Method::Get,
            &format!("/myRPC/registry/s?format=json&index={m}&delta=1"),
            &[],
        );
        assert_eq!(json(&r)["delta"], true);
        // Other formats ignore delta=1.
        let r = call(
            &reg,
            Method::Get,
            &format!("/myRPC/registry/s?format=text&index={m}&wait=0s&delta=1"),
            &[],
        );
        assert_eq!(body(&r), "tcp@a\ntcp@b\ntcp@c\n");
    }

    #[test]
    fn every_listing_says_it_while_the_registry_recovers() {
        let clock = crate::clock::ManualClock::new();
        let reg = Registry::builder()
            .max_ttl(Duration::from_secs(30))
            .clock(clock.clone())
            .free_form_addresses(true)
            .build()
            .unwrap();
        reg.put_with("s", "tcp@a", &PutOptions::new().meta("zone", "eu"))
            .unwrap();
        let queries = [
            "",
            "?format=text",
            "?format=json",
            "?meta.zone=eu",
            "?meta.zone=eu&format=text",
            "?meta.zone=eu&format=json",
            "?index=1&wait=0s",
        ];
        let says = |reg: &Registry| -> Vec<(Option<String>, Option<bool>)> {
            queries
                .iter()
                .map(|q| {
                    let r = call(reg, Method::Get, &format!("/myRPC/registry/s{q}"), &[]);
                    let json = serde_json::from_str::<serde_json::Value>(body(&r)).ok();
                    (
                        r.header(HEADER_RECOVERING).map(str::to_string),
                        json.map(|v| v["recovering"].as_bool().expect("always present")),
                    )
                })
                .collect()
        };
        let json_at = [2, 5];
        let expect = |on: bool| -> Vec<(Option<String>, Option<bool>)> {
            (0..queries.len())
                .map(|i| {
                    (
                        on.then(|| "true".to_string()),
                        json_at.contains(&i).then_some(on),
                    )
                })
                .collect()
        };
        // A table no server started on is not recovering.
        assert_eq!(says(&reg), expect(false));
        reg.begin_recovery();
        assert_eq!(says(&reg), expect(true));
        clock.advance(Duration::from_secs(29));
        assert_eq!(says(&reg), expect(true));
        clock.advance(Duration::from_secs(1));
        assert_eq!(says(&reg), expect(false));
        // Writes do not say it.
        let r = call(
            &reg,
            Method::Post,
            "/myRPC/registry/s",
            &[("X-Myrpc-Server", "b")],
        );
        assert!(r.header(HEADER_RECOVERING).is_none());

        // A restored table is not recovering, whenever the server starts.
        let restored = Registry::builder().clock(clock.clone()).build().unwrap();
        restored.restore(&reg.snapshot()).unwrap();
        restored.begin_recovery();
        assert_eq!(says(&restored), expect(false));
    }
}
