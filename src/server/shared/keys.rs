//! Where front-ends keep the table in etcd (docs/ETCD.md).
//!
//! - An entry is `{prefix}/{service}/{addr}`, the key the library's
//!   `EtcdRegistration` writes, so each side lists the other's. Its value is
//!   `{"addr", "weight", "meta"}` (what the library reads), plus
//!   `"status"` when it is draining and `"ttl_ms"`, the TTL its server
//!   asked for. A front-end writes it without a lease: its life is decided
//!   by the claims below, not by one front-end's lease.
//! - A claim is `{prefix}.claims/{service}/{hex(addr)}/{lease}`, bound to
//!   the lease of the front-end that hears the entry's heartbeats: "this
//!   front-end keeps it alive". A front-end writes its claim once, when it
//!   first hears the entry, and deletes it when the entry's TTL passes
//!   there without a heartbeat; the entry goes with the last claim. A
//!   front-end that dies takes its claims with its lease, and the entries
//!   nobody else claims are deleted one TTL later unless another
//!   front-end claims them first.
//!
//! The address is hex in a claim's key so that the claims of one entry are
//! one prefix (an address may hold `/`). `.` sorts just below `/`, so one
//! range from `{prefix}.` to `{prefix}0` holds entries and claims, and one
//! watch follows both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::etcd::{b64, prefix_end, unb64};
use crate::protocol::{Status, validate_addr, validate_service};

/// The keys of one store.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// Without a trailing `/`.
    prefix: String,
}

/// An entry: service and address.
pub(super) type Id = (String, String);

/// What a key under the layout is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Key {
    Entry(Id),
    /// An entry's claim by the front-end holding the lease.
    Claim(Id, String),
}

/// An entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryValue {
    pub(super) weight: u32,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) status: Status,
    /// `None` in a value the library wrote (its lease decides).
    pub(super) ttl: Option<Duration>,
}

impl Layout {
    pub(super) fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub(super) fn entry(&self, (service, addr): &Id) -> String {
        format!("{}/{service}/{addr}", self.prefix)
    }

    /// The prefix of every claim of an entry.
    pub(super) fn claims_of(&self, (service, addr): &Id) -> String {
        let mut k = format!("{}.claims/{service}/", self.prefix);
        for b in addr.bytes() {
            let _ = write!(k, "{b:02x}");
        }
        k.push('/');
        k
    }

    /// The claims of an entry as a range: its prefix and the end of it.
    pub(super) fn claims_range(&self, id: &Id) -> (String, String) {
        let of = self.claims_of(id);
        // The prefix is ASCII (hex, a service name, `/`), and so its end.
        let end = String::from_utf8(prefix_end(of.as_bytes())).expect("ASCII ends in ASCII");
        (of, end)
    }

    pub(super) fn claim(&self, id: &Id, lease: &str) -> String {
        self.claims_of(id) + lease
    }

    /// The range holding every entry and claim: `[{prefix}., {prefix}0)`.
    pub(super) fn range(&self) -> (String, String) {
        (format!("{}.", self.prefix), format!("{}0", self.prefix))
    }

    /// What `key` is; `None` for a key of something else under the range.
    pub(super) fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if let Some(rest) = rest.strip_prefix('/') {
            let (service, addr) = rest.split_once('/')?;
            validate_service(service).ok()?;
            validate_addr(addr).ok()?;
            return Some(Key::Entry((service.to_string(), addr.to_string())));
        }
        let rest = rest.strip_prefix(".claims/")?;
        let (service, rest) = rest.split_once('/')?;
        let (hex, lease) = rest.split_once('/')?;
        validate_service(service).ok()?;
        if hex.len() % 2 != 0 || lease.is_empty() {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        let addr = String::from_utf8(bytes?).ok()?;
        validate_addr(&addr).ok()?;
        Some(Key::Claim((service.to_string(), addr), lease.to_string()))
    }
}

impl EntryValue {
    pub(super) fn encode(&self, addr: &str) -> String {
        let mut v = json!({ "addr": addr, "weight": self.weight, "meta": self.meta });
        if self.status == Status::Draining {
            v["status"] = Value::from(self.status.as_str());
        }
        if let Some(ttl) = self.ttl {
            v["ttl_ms"] = Value::from(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        }
        v.to_string()
    }

    /// The value of an entry, as forgiving as the library's reader: what
    /// is missing or malformed takes its default.
    pub(super) fn decode(bytes: &[u8]) -> EntryValue {
        let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        EntryValue {
            weight: v["weight"].as_u64().map_or(1, |w| {
                w.clamp(1, u64::from(crate::registry::MAX_WEIGHT)) as u32
            }),
            meta: v["meta"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .filter(|(k, _)| !k.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            status: v["status"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            ttl: v["ttl_ms"].as_u64().map(Duration::from_millis),
        }
    }
}

/// The gateway's form of a key or value.
pub(super) fn enc(s: &str) -> String {
    b64(s.as_bytes())
}

/// A gateway key or value back to bytes (empty when malformed).
pub(super) fn dec(v: &Value) -> Vec<u8> {
    v.as_str().and_then(unb64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_claims_of_one_entry_share_a_prefix() {
        let l = Layout::new("/regcenter/");
        let id: Id = ("arith".into(), "unix@/tmp/a/b".into());
        assert_eq!(l.entry(&id), "/regcenter/arith/unix@/tmp/a/b");
        assert_eq!(
            l.parse(l.entry(&id).as_bytes()),
            Some(Key::Entry(id.clone()))
        );
        let claim = l.claim(&id, "7587");
        assert!(claim.starts_with(&l.claims_of(&id)));
        assert_eq!(
            l.parse(claim.as_bytes()),
            Some(Key::Claim(id.clone(), "7587".into()))
        );
        // The claims of an address that extends another are not under it.
        let longer: Id = ("arith".into(), "unix@/tmp/a/bc".into());
        assert!(!l.claim(&longer, "1").starts_with(&l.claims_of(&id)));
        let (of, end) = l.claims_range(&id);
        assert!(of <= l.claim(&id, "9") && l.claim(&id, "9") < end);
        assert!(!(of <= l.claim(&longer, "1") && l.claim(&longer, "1") < end));
        let (from, to) = l.range();
        for k in [l.entry(&id), claim] {
            assert!(from <= k && k < to, "{k} outside {from}..{to}");
        }
        assert_eq!(l.parse(b"/regcenter.other/x"), None);
        assert_eq!(l.parse(b"/regcenter/bad service/tcp@a:1"), None);
        assert_eq!(l.parse(b"/regcenter.claims/arith/zz/1"), None);
    }

    #[test]
    fn values_round_trip_and_the_librarys_read_with_defaults() {
        let v = EntryValue {
            weight: 3,
            meta: [("zone".to_string(), "eu".to_string())].into(),
            status: Status::Draining,
            ttl: Some(Duration::from_millis(1500)),
        };
        assert_eq!(EntryValue::decode(v.encode("tcp@a:1").as_bytes()), v);
        let lib = EntryValue::decode(br#"{"addr":"tcp@a:1","weight":2,"meta":{}}"#);
        assert_eq!((lib.weight, lib.status, lib.ttl), (2, Status::Up, None));
        assert_eq!(EntryValue::decode(b"not json").weight, 1);
    }
}
