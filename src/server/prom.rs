//! `GET /prometheus/targets[?service=NAME]`: the registry's instances in
//! the format of Prometheus' HTTP service discovery (`http_sd_configs`),
//! one target group per instance, so that every label of a group holds for
//! its one target. Also what the Consul API (`consul.rs`) shares with it:
//! which addresses are `proto@host:port`, and an entry's status.

use serde_json::{Map, Value, json};

use super::route::{Method, Request, Response, RouteConfig, method_not_allowed};
use crate::protocol::{HEADER_INDEX, validate_service};
use crate::registry::{EntryInfo, Registry};

/// Where Prometheus reads its targets.
pub(super) const PATH: &str = "/prometheus/targets";

/// The prefix of every label this discovery sets (Prometheus drops labels
/// starting with `__` after relabelling, as it does for its own `__meta_`).
const LABEL_PREFIX: &str = "__meta_regcenter_";

/// Answers `GET /prometheus/targets`, with the rules of listings for auth.
pub(super) fn targets(reg: &Registry, cfg: &RouteConfig, req: &Request, query: &str) -> Response {
    if !matches!(req.method, Method::Get | Method::Head) {
        return method_not_allowed("GET");
    }
    if let Err(r) = cfg.authorize(req, false) {
        return r;
    }
    let service = query
        .split('&')
        .filter_map(|p| p.strip_prefix("service="))
        .next_back();
    let (index, entries) = match service {
        Some(name) => {
            if let Err(e) = validate_service(name) {
                return Response::text(400, e.to_string());
            }
            reg.instances(name)
        }
        // Read before the entries: an index older than what it comes with
        // is harmless, a newer one could hide a change.
        None => (reg.counter(), reg.entries()),
    };
    let groups: Vec<Value> = entries
        .iter()
        .filter_map(|e| {
            let target = HostPort::parse(&e.addr)?.target();
            Some(json!({"targets": [target], "labels": labels(e)}))
        })
        .collect();
    let mut body = Value::Array(groups).to_string();
    body.push('\n');
    let mut r = Response::with_body(200, "application/json", body);
    r.headers.push((HEADER_INDEX, index.to_string()));
    r
}

/// The labels of one instance's target group.
fn labels(e: &EntryInfo) -> Map<String, Value> {
    let mut labels = Map::new();
    let mut label = |name: &str, value: &str| {
        labels
            .entry(format!("{LABEL_PREFIX}{name}"))
            .or_insert_with(|| Value::String(value.to_string()));
    };
    label("service", &e.service);
    label("address", &e.addr);
    label("weight", &e.weight.to_string());
    label("status", e.status.as_str());
    // Keys in byte order: of two keys that make one label name, the first
    // is kept.
    for (k, v) in &e.meta {
        label(&format!("meta_{}", label_name(k)), v);
    }
    labels
}

/// A metadata key as a label name: each character other than ASCII
/// letters, digits and `_` becomes `_` (as Prometheus' own discoveries
/// sanitise Consul's metadata keys).
pub(super) fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The host and port of a `proto@host:port` address: `proto` not empty,
/// `host` a name or IPv4 address without `:`, or an IPv6 address in
/// brackets, `port` 1 to 65535 in decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HostPort<'a> {
    /// Without the brackets of an IPv6 address.
    pub(super) host: &'a str,
    pub(super) port: u16,
    bracketed: bool,
}

impl<'a> HostPort<'a> {
    /// `None` for an address that is not `proto@host:port`.
    pub(super) fn parse(addr: &'a str) -> Option<HostPort<'a>> {
        let (proto, rest) = addr.split_once('@')?;
        let (host, port) = rest.rsplit_once(':')?;
        if proto.is_empty() || port.is_empty() || port.len() > 5 {
            return None;
        }
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
        let (host, bracketed) = match host.strip_prefix('[') {
            Some(inner) => (inner.strip_suffix(']')?, true),
            None => (host, false),
        };
        let bad = |c: char| matches!(c, '@' | '/' | '[' | ']') || (!bracketed && c == ':');
        if host.is_empty() || host.contains(bad) || (bracketed && !host.contains(':')) {
            return None;
        }
        Some(HostPort {
            host,
            port,
            bracketed,
        })
    }

    /// `host:port`, with the brackets of an IPv6 address.
    pub(super) fn target(&self) -> String {
        if self.bracketed {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proto_at_host_port_addresses_are_targets() {
        let t = |a: &str| HostPort::parse(a).map(|h| (h.host.to_string(), h.port, h.target()));
        assert_eq!(
            t("tcp@10.0.0.1:7001"),
            Some(("10.0.0.1".into(), 7001, "10.0.0.1:7001".into()))
        );
        assert_eq!(
            t("http@[::1]:80"),
            Some(("::1".into(), 80, "[::1]:80".into()))
        );
        assert_eq!(
            t("tcp@db.example:5432"),
            Some(("db.example".into(), 5432, "db.example:5432".into()))
        );
        for bad in [
            "10.0.0.1:7001",
            "@h:1",
            "tcp@:1",
            "tcp@h:",
            "tcp@h:0",
            "tcp@h:65536",
            "tcp@h:+1",
            "tcp@h:http",
            "tcp@::1:80",
            "tcp@[]:80",
            "tcp@[h]:80",
            "tcp@[::1:80",
            "unix@/run/x.sock",
            "tcp@a/b:1",
            "tcp@a@b:1",
        ] {
            assert_eq!(HostPort::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn metadata_keys_become_label_names() {
        assert_eq!(label_name("zone"), "zone");
        assert_eq!(label_name("build.id-2"), "build_id_2");
        assert_eq!(label_name("été"), "_t_");
    }
}
