//! `Instance`: one server as a discovery knows it, with the attributes its
//! source gave (weight, metadata, status, time left) and whether picks skip
//! it for now.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::protocol::Status;

/// One server of a service, as its discovery last saw it.
///
/// [`Discovery::instances`](crate::Discovery::instances) lists every known
/// instance, draining and ejected ones included;
/// [`Discovery::get_instance`](crate::Discovery::get_instance) picks one
/// that takes work. Attributes a source does not give take their defaults:
/// weight 1, no metadata, [`Status::Up`], no expiry (the seed's registry
/// gives nothing but addresses).
///
/// ```
/// use regcenter::{Discovery, MultiServersDiscovery, Status};
///
/// let d = MultiServersDiscovery::new(vec!["tcp@127.0.0.1:7001".into()])?;
/// let i = &d.instances()?[0];
/// assert_eq!(i.addr(), "tcp@127.0.0.1:7001");
/// assert_eq!(i.protocol(), Some("tcp"));
/// assert_eq!(i.socket_addr(), Some("127.0.0.1:7001"));
/// assert_eq!((i.weight(), i.status()), (1, Status::Up));
/// assert!(i.meta().is_empty() && i.expires_in().is_none() && !i.is_ejected());
/// # Ok::<(), regcenter::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Instance {
    pub(crate) addr: String,
    pub(crate) weight: u32,
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) status: Status,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) ejected: bool,
}

impl Instance {
    /// An instance with the defaults: weight 1, no metadata, up, no expiry.
    pub(crate) fn new(addr: String) -> Instance {
        Instance {
            addr,
            weight: 1,
            meta: BTreeMap::new(),
            status: Status::Up,
            expires_in: None,
            ejected: false,
        }
    }

    /// The address as registered, e.g. `tcp@127.0.0.1:7001`.
    ///
    /// ```
    /// # use regcenter::{Discovery, MultiServersDiscovery};
    /// let d = MultiServersDiscovery::new(vec!["tcp@10.0.0.1:7001".into()])?;
    /// assert_eq!(d.instances()?[0].addr(), "tcp@10.0.0.1:7001");
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The weight for [`SelectMode::WeightedRoundRobin`](crate::SelectMode),
    /// 1 to 10 000; 1 where the source does not say.
    ///
    /// ```
    /// # use regcenter::{Discovery, MultiServersDiscovery};
    /// let d = MultiServersDiscovery::new(vec!["tcp@10.0.0.1:7001".into()])?;
    /// assert_eq!(d.instances()?[0].weight(), 1);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The metadata labels the server registered with (a zone, a version),
    /// sorted by key; empty where the source gives none.
    ///
    /// ```
    /// use regcenter::{Discovery, PutOptions, RegistryDiscovery, RegistryServer};
    ///
    /// let server = RegistryServer::start_local()?;
    /// let opts = PutOptions::new().meta("zone", "eu").meta("version", "2");
    /// server.registry().put_with("arith", "tcp@127.0.0.1:7001", &opts)?;
    /// let d = RegistryDiscovery::builder(server.url()).service("arith").build()?;
    /// let meta = d.instances()?[0].meta().clone();
    /// assert_eq!(meta.into_iter().collect::<Vec<_>>(), [
    ///     ("version".to_string(), "2".to_string()),
    ///     ("zone".to_string(), "eu".to_string()),
    /// ]);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn meta(&self) -> &BTreeMap<String, String> {
        &self.meta
    }

    /// Whether the server takes new work. A draining instance is listed by
    /// [`instances`](crate::Discovery::instances) but never picked. A status
    /// newer than this client knows is read as [`Status::Draining`]: it
    /// takes no new work from us.
    ///
    /// ```
    /// # use regcenter::{Discovery, MultiServersDiscovery, Status};
    /// let d = MultiServersDiscovery::new(vec!["tcp@10.0.0.1:7001".into()])?;
    /// assert_eq!(d.instances()?[0].status(), Status::Up);
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn status(&self) -> Status {
        self.status
    }

    /// Time the entry had left before expiring when it was listed; `None`
    /// for an entry that never expires, and where the source does not say.
    ///
    /// ```
    /// use std::time::Duration;
    /// use regcenter::{Discovery, RegistryDiscovery, RegistryServer};
    ///
    /// let server = RegistryServer::start_local()?; // entries live 1 s
    /// server.registry().put("", "tcp@127.0.0.1:7001")?;
    /// let d = RegistryDiscovery::new(server.url())?;
    /// let left = d.instances()?[0].expires_in().expect("a TTL");
    /// assert!(left <= Duration::from_secs(1));
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// Whether picks skip this instance for now, after consecutive failures
    /// reported with
    /// [`RegistryDiscovery::report_failure`](crate::RegistryDiscovery::report_failure).
    ///
    /// ```
    /// # use regcenter::{Discovery, MultiServersDiscovery};
    /// let d = MultiServersDiscovery::new(vec!["tcp@10.0.0.1:7001".into()])?;
    /// assert!(!d.instances()?[0].is_ejected());
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn is_ejected(&self) -> bool {
        self.ejected
    }

    /// The protocol of a `proto@addr` address (`tcp` of
    /// `tcp@127.0.0.1:7001`, as the seed's clients dial it); `None` for an
    /// address of another shape.
    ///
    /// ```
    /// # use regcenter::{Discovery, MultiServersDiscovery};
    /// let d = MultiServersDiscovery::new(vec!["tcp@10.0.0.1:7001".into(), "plain".into()])?;
    /// let i = d.instances()?;
    /// assert_eq!((i[0].protocol(), i[1].protocol()), (Some("tcp"), None));
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn protocol(&self) -> Option<&str> {
        self.split().map(|(p, _)| p)
    }

    /// The address after the protocol of a `proto@addr` address
    /// (`127.0.0.1:7001` of `tcp@127.0.0.1:7001`); `None` for an address of
    /// another shape.
    ///
    /// ```
    /// # use regcenter::{Discovery, MultiServersDiscovery};
    /// let d = MultiServersDiscovery::new(vec!["tcp@10.0.0.1:7001".into(), "@x".into()])?;
    /// let i = d.instances()?;
    /// assert_eq!((i[0].socket_addr(), i[1].socket_addr()), (Some("10.0.0.1:7001"), None));
    /// # Ok::<(), regcenter::Error>(())
    /// ```
    pub fn socket_addr(&self) -> Option<&str> {
        self.split().map(|(_, a)| a)
    }

    /// `proto@addr` with both parts present and one `@` only.
    fn split(&self) -> Option<(&str, &str)> {
        let (proto, rest) = self.addr.split_once('@')?;
        (!proto.is_empty() && !rest.is_empty() && !rest.contains('@')).then_some((proto, rest))
    }

    /// Whether the instance takes work from picks, leaving ejection aside.
    pub(crate) fn is_up(&self) -> bool {
        self.status == Status::Up
    }

    /// Whether the attributes of a registration differ: a change means the
    /// server registered again (a new process, or new settings).
    pub(crate) fn same_registration(&self, other: &Instance) -> bool {
        self.addr == other.addr
            && self.weight == other.weight
            && self.status == other.status
            && self.meta == other.meta
    }

    /// Whether every `(key, value)` condition holds in the metadata.
    pub(crate) fn matches(&self, conditions: &[(String, String)]) -> bool {
        conditions
            .iter()
            .all(|(k, v)| self.meta.get(k).is_some_and(|m| m == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_and_socket_addr_only_for_the_proto_at_addr_shape() {
        let parts = |a: &str| {
            let i = Instance::new(a.to_string());
            (
                i.protocol().map(str::to_string),
                i.socket_addr().map(str::to_string),
            )
        };
        let some = |p: &str, a: &str| (Some(p.to_string()), Some(a.to_string()));
        assert_eq!(parts("tcp@127.0.0.1:7001"), some("tcp", "127.0.0.1:7001"));
        assert_eq!(parts("unix@/tmp/s.sock"), some("unix", "/tmp/s.sock"));
        for other in ["127.0.0.1:7001", "@h:1", "tcp@", "a@b@c", "x"] {
            assert_eq!(parts(other), (None, None), "{other}");
        }
    }

    #[test]
    fn conditions_must_all_hold() {
        let mut i = Instance::new("tcp@a:1".into());
        i.meta.insert("zone".into(), "eu".into());
        i.meta.insert("v".into(), "2".into());
        let c = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(i.matches(&[]));
        assert!(i.matches(&c(&[("zone", "eu")])));
        assert!(i.matches(&c(&[("zone", "eu"), ("v", "2")])));
        assert!(!i.matches(&c(&[("zone", "eu"), ("v", "3")])));
        assert!(
            !i.matches(&c(&[("rack", "")])),
            "a missing key never matches"
        );
    }
}
