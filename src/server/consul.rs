//! A read-only subset of Consul's HTTP API under `/v1/`, enough for
//! Prometheus' `consul_sd_configs` with its defaults and for Consul's HTTP
//! clients: `agent/self`, `catalog/services`, `catalog/service/{name}` and
//! `health/service/{name}`, with Consul's blocking queries built on the
//! registry's long-poll (`watch.rs`).
//!
//! The mapping (docs/PROTOCOL.md, "Consul API"): the registry is one node,
//! [`NODE`] in datacenter [`DATACENTER`]; each service is a Consul service,
//! the default one named [`DEFAULT_SERVICE`]; each `proto@host:port` entry
//! is an instance (other addresses are left out), its metadata the
//! instance's `Meta`, its weight `Weights.Passing`, and the metadata key
//! [`TAGS_KEY`] its tags.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::prom::HostPort;
use super::route::{Body, Format, Method, Outcome, Request, Response, RouteConfig, Watch};
use super::watch::ANY_SERVICE;
use crate::protocol::{parse_duration, validate_service};
use crate::registry::{EntryInfo, Registry};

/// The datacenter the registry answers for (Consul's default name).
pub(crate) const DATACENTER: &str = "dc1";
/// The name of the one node: the registry itself.
pub(crate) const NODE: &str = "regcenter";
/// The Consul name of the default service (the seed's empty name): `~` is
/// not allowed in a service name, so no named service can take it.
pub(crate) const DEFAULT_SERVICE: &str = "~default";
/// The metadata key whose comma-separated value gives an instance's tags.
pub(crate) const TAGS_KEY: &str = "tags";

/// Consul's default and largest wait of a blocking query.
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The parked watchers of a service no registry service can be named, so
/// that a blocking query on such a name waits out its time, as on Consul.
const NO_SERVICE: &str = "~";

/// What a (possibly parked) Consul read answers; the service is the
/// watch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    kind: Kind,
    /// The node's address in answers.
    node: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    CatalogService,
    Health { passing: bool },
}

/// Answers a request under `/v1`.
pub(super) fn route(
    reg: &Registry,
    cfg: &RouteConfig,
    req: &Request,
    path: &str,
    query: &str,
) -> Outcome {
    // Writes are refused wherever they go: registering is the protocol's
    // job (POST on the base path), which heartbeats keep renewing.
    if !matches!(req.method, Method::Get | Method::Head) {
        let mut r = Response::text(
            405,
            format!(
                "the Consul API of regcenter is read-only; register with POST {}[/SERVICE]",
                cfg.path
            ),
        );
        r.headers.push(("Allow", "GET".into()));
        return r.into();
    }
    let segments: Vec<&str> = path.trim_start_matches("/v1").split('/').skip(1).collect();
    let endpoint = match segments.as_slice() {
        ["agent", "self"] => None,
        ["catalog", "services"] => Some((Kind::Services, ANY_SERVICE.to_string())),
        ["catalog", "service", name] if !name.is_empty() => {
            Some((Kind::CatalogService, service_of(name)))
        }
        ["health", "service", name] if !name.is_empty() => {
            Some((Kind::Health { passing: false }, service_of(name)))
        }
        _ => {
            return Response::text(
                404,
                format!(
                    "no Consul endpoint {}; regcenter answers GET /v1/agent/self, /v1/catalog/services, /v1/catalog/service/NAME and /v1/health/service/NAME",
                    clip(path)
                ),
            )
            .into();
        }
    };
    if let Err(r) = authorize(cfg, req) {
        return r.into();
    }
    let q = match Query::parse(query) {
        Ok(q) => q,
        Err(r) => return r.into(),
    };
    let node = node_addr(cfg, req);
    let Some((mut kind, service)) = endpoint else {
        return agent_self(reg, node).into();
    };
    if let Kind::Health { passing } = &mut kind {
        *passing = q.passing;
    }
    let view = View { kind, node };
    // Consul blocks until the index passes `index`; a zero or stale index,
    // or one from before a restart (beyond the counter), answers at once.
    // The registry's index is the client's Consul index less one (`answer`).
    if let Some(index) = q.index.and_then(|i| i.checked_sub(1))
        && reg.index(&service) <= index
        && index <= reg.counter()
    {
        return Outcome::Park(Watch {
            service,
            index,
            wait: q.wait,
            format: Format::Consul(view),
            filter: Vec::new().into(),
        });
    }
    render(reg, &service, view).into()
}

/// The answer of `view` for `service` (the watch's key) now.
pub(super) fn render(reg: &Registry, service: &str, view: View) -> Response {
    match view.kind {
        Kind::Services => {
            // The counter is read first: an index older than the list it
            // comes with makes the next query answer at once, a newer one
            // could hide a change.
            let index = reg.counter();
            let entries = reg.entries();
            let mut services: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for (e, _) in instances(&entries) {
                services
                    .entry(consul_name(&e.service))
                    .or_default()
                    .extend(tags_of(e));
            }
            answer(index, json!(services))
        }
        Kind::CatalogService => {
            let (index, entries) = reg.instances(service);
            let list = instances(&entries)
                .map(|(e, hp)| catalog_entry(e, hp, index, view.node))
                .collect();
            answer(index, Value::Array(list))
        }
        Kind::Health { passing } => {
            let (index, entries) = reg.instances(service);
            let list = instances(&entries)
                .filter(|(e, _)| !passing || e.status == crate::Status::Up)
                .map(|(e, hp)| health_entry(e, hp, index, view.node))
                .collect();
            answer(index, Value::Array(list))
        }
    }
}

/// A registry service for a Consul name in a path (percent-decoded).
fn service_of(segment: &str) -> String {
    let name = percent_decode(segment);
    if name == DEFAULT_SERVICE {
        String::new()
    } else if validate_service(&name).is_ok() {
        name
    } else {
        NO_SERVICE.to_string()
    }
}

fn consul_name(service: &str) -> &str {
    if service.is_empty() {
        DEFAULT_SERVICE
    } else {
        service
    }
}

/// The entries that are Consul instances, with their host and port.
fn instances(entries: &[EntryInfo]) -> impl Iterator<Item = (&EntryInfo, HostPort<'_>)> {
    entries
        .iter()
        .filter_map(|e| Some((e, HostPort::parse(&e.addr)?)))
}

/// The tags of an instance: the items of its `tags` metadata, sorted,
/// without duplicates or empty items.
fn tags_of(e: &EntryInfo) -> BTreeSet<&str> {
    e.meta.get(TAGS_KEY).map_or_else(BTreeSet::new, |t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    })
}

/// A service ID unique on the node: a service name has no `/`.
fn service_id(e: &EntryInfo) -> String {
    format!("{}/{}", consul_name(&e.service), e.addr)
}

/// The Consul index of a registry modify index (see [`answer`]).
fn consul_index(index: u64) -> u64 {
    index.saturating_add(1)
}

fn catalog_entry(e: &EntryInfo, hp: HostPort<'_>, index: u64, node: IpAddr) -> Value {
    let index = consul_index(index);
    json!({
        "ID": "",
        "Node": NODE,
        "Address": node.to_string(),
        "Datacenter": DATACENTER,
        "TaggedAddresses": {},
        "NodeMeta": {},
        "ServiceKind": "",
        "ServiceID": service_id(e),
        "ServiceName": consul_name(&e.service),
        "ServiceTags": tags_of(e),
        "ServiceAddress": hp.host,
        "ServiceTaggedAddresses": {},
        "ServiceWeights": {"Passing": e.weight, "Warning": 1},
        "ServiceMeta": e.meta,
        "ServicePort": hp.port,
        "ServiceEnableTagOverride": false,
        "CreateIndex": index,
        "ModifyIndex": index,
    })
}

fn health_entry(e: &EntryInfo, hp: HostPort<'_>, index: u64, node: IpAddr) -> Value {
    let index = consul_index(index);
    let id = service_id(e);
    let name = consul_name(&e.service);
    let tags = tags_of(e);
    let check = |check_id: &str, check: &str, status: &str, notes: &str, service: bool| {
        json!({
            "Node": NODE,
            "CheckID": check_id,
            "Name": check,
            "Status": status,
            "Notes": notes,
            "Output": "",
            "ServiceID": if service { id.as_str() } else { "" },
            "ServiceName": if service { name } else { "" },
            "ServiceTags": if service { tags.clone() } else { BTreeSet::new() },
            "Type": if service { "ttl" } else { "" },
            "CreateIndex": index,
            "ModifyIndex": index,
        })
    };
    let node_check = check("serfHealth", "Serf Health Status", "passing", "", false);
    // A draining entry is in maintenance, as Consul marks an instance that
    // takes no new work: a critical check under Consul's own ID.
    let service_check = match e.status {
        crate::Status::Draining => check(
            &format!("_service_maintenance:{id}"),
            "Service Maintenance Mode",
            "critical",
            "draining",
            true,
        ),
        _ => check(
            &format!("service:{id}"),
            "regcenter heartbeat",
            "passing",
            "renewed by heartbeats within its TTL",
            true,
        ),
    };
    json!({
        "Node": {
            "ID": "",
            "Node": NODE,
            "Address": node.to_string(),
            "Datacenter": DATACENTER,
            "TaggedAddresses": {},
            "Meta": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        },
        "Service": {
            "Kind": "",
            "ID": id,
            "Service": name,
            "Tags": tags,
            "Address": hp.host,
            "TaggedAddresses": {},
            "Meta": e.meta,
            "Port": hp.port,
            "Weights": {"Passing": e.weight, "Warning": 1},
            "EnableTagOverride": false,
            "Datacenter": DATACENTER,
            "CreateIndex": index,
            "ModifyIndex": index,
        },
        "Checks": [node_check, service_check],
    })
}

/// `agent/self`: every top-level value an object, as Consul's Go client
/// decodes it into `map[string]map[string]interface{}`.
fn agent_self(reg: &Registry, node: IpAddr) -> Response {
    answer(
        reg.counter(),
        json!({
            "Config": {
                "Datacenter": DATACENTER,
                "PrimaryDatacenter": DATACENTER,
                "NodeName": NODE,
                "NodeID": "",
                "Server": true,
                "Revision": "",
                "Version": env!("CARGO_PKG_VERSION"),
                "Product": "regcenter",
            },
            "DebugConfig": {},
            "Member": {
                "Name": NODE,
                "Addr": node.to_string(),
                "Port": 0,
                "Tags": {"dc": DATACENTER, "role": "node"},
                "Status": 1,
            },
            "Meta": {},
            "Stats": {},
        }),
    )
}

/// A 200 with Consul's query headers. `X-Consul-Index` is the modify
/// index plus one: never 0 (Consul's clients take 0 for "no answer"), and
/// still moving on the first change of a registry that started empty,
/// which `max(1, index)` would hide.
fn answer(index: u64, value: Value) -> Response {
    let mut body = value.to_string();
    body.push('\n');
    Response {
        status: 200,
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("X-Consul-Index", consul_index(index).to_string()),
            // Consul's Go client fails a query without LastContact.
            ("X-Consul-KnownLeader", "true".into()),
            ("X-Consul-LastContact", "0".into()),
        ],
        body: Body::Text(body),
    }
}

/// The read rules of listings; Consul's clients send the token as
/// `X-Consul-Token`, which is taken as well as `Authorization: Bearer`.
fn authorize(cfg: &RouteConfig, req: &Request) -> Result<(), Response> {
    if let Some(token) = &cfg.token
        && cfg.protect_reads
        && let Some(given) = req.header("X-Consul-Token")
    {
        if super::route::constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
            return Ok(());
        }
        let mut r = Response::text(401, "the X-Consul-Token is wrong");
        r.headers.push(("WWW-Authenticate", "Bearer".into()));
        return Err(r);
    }
    cfg.authorize(req, false)
}

/// The node's address: the one the registry listens on, or, when that is
/// every address, the one the client reached (its `Host`, when an IP).
fn node_addr(cfg: &RouteConfig, req: &Request) -> IpAddr {
    if !cfg.local_ip.is_unspecified() {
        return cfg.local_ip;
    }
    req.header("Host")
        .and_then(|h| {
            let host = h.rsplit_once(':').map_or(h, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    h
                }
            });
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()
        })
        .unwrap_or(cfg.local_ip)
}

/// The parameters of a query that regcenter reads.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    index: Option<u64>,
    wait: Duration,
    passing: bool,
}

impl Query {
    fn parse(query: &str) -> Result<Query, Response> {
        let mut q = Query {
            index: None,
            wait: DEFAULT_WAIT,
            passing: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "index" => {
                    q.index = Some(v.parse().map_err(|_| {
                        Response::text(
                            400,
                            format!(
                                "invalid index {:?}: use the X-Consul-Index of the last answer",
                                clip(v)
                            ),
                        )
                    })?);
                }
                // Go durations, as Consul parses them: "10s", "120000ms";
                // zero means the default, as on Consul.
                "wait" => {
                    let wait = parse_duration(v).map_err(|e| {
                        Response::text(400, format!("invalid wait time: {e}; use e.g. 10s or 5m"))
                    })?;
                    q.wait = if wait.is_zero() {
                        DEFAULT_WAIT
                    } else {
                        wait.min(MAX_WAIT)
                    };
                }
                "passing" => {
                    q.passing = match v {
                        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
                        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
                        _ => {
                            return Err(Response::text(
                                400,
                                format!("invalid value for ?passing: {:?}", clip(v)),
                            ));
                        }
                    };
                }
                "dc" if !v.is_empty() && v != DATACENTER => {
                    // Consul's answer for a datacenter it does not know.
                    return Err(Response::text(
                        500,
                        format!("No path to datacenter: regcenter is one datacenter, {DATACENTER}"),
                    ));
                }
                "tag" | "filter" | "node-meta" => {
                    return Err(Response::text(
                        400,
                        format!(
                            "the ?{k} filter is not supported by regcenter's Consul API; filter the answer instead"
                        ),
                    ));
                }
                // Consistency modes (stale, consistent, cached), near (one
                // node) and the rest change nothing here.
                _ => {}
            }
        }
        Ok(q)
    }
}

/// `%XX` escapes decoded; a bad escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps echoed client input short in one-line reasons.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_follow_consul_default_cap_and_units() {
        let wait = |q: &str| Query::parse(q).map(|q| q.wait).ok();
        assert_eq!(wait(""), Some(DEFAULT_WAIT));
        assert_eq!(wait("wait=120000ms"), Some(Duration::from_secs(120)));
        assert_eq!(wait("wait=10s"), Some(Duration::from_secs(10)));
        assert_eq!(wait("wait=1h"), Some(MAX_WAIT));
        assert_eq!(wait("wait=0s"), Some(DEFAULT_WAIT));
        assert_eq!(wait("wait=10"), None);
        assert_eq!(wait("wait=-1s"), None);
    }

    #[test]
    fn passing_takes_go_booleans() {
        let passing = |q: &str| Query::parse(q).map(|q| q.passing).ok();
        assert_eq!(passing(""), Some(false));
        assert_eq!(passing("passing"), Some(true));
        assert_eq!(passing("passing=1"), Some(true));
        assert_eq!(passing("passing=false"), Some(false));
        assert_eq!(passing("passing=maybe"), None);
    }

    #[test]
    fn service_names_map_both_ways_without_collision() {
        assert_eq!(service_of("~default"), "");
        assert_eq!(service_of("%7Edefault"), "");
        assert_eq!(service_of("arith"), "arith");
        assert_eq!(service_of("default"), "default");
        assert_eq!(service_of("*"), NO_SERVICE);
        assert_eq!(consul_name(""), DEFAULT_SERVICE);
        assert!(validate_service(DEFAULT_SERVICE).is_err());
        assert!(validate_service(NO_SERVICE).is_err());
        assert!(validate_service(ANY_SERVICE).is_err());
    }
}
