//! `regcenter list`: print the alive servers, one per line.

use std::time::Duration;

use regcenter::Discovery;
use regcenter::protocol::{HEADER_INDEX, HEADER_SERVERS};

use super::{Args, CA_FILE, Command, ETCD, Failure, Flag, REGISTRY, SERVICE, TOKEN_FILE, out};

pub(super) const COMMAND: Command = Command {
    name: "list",
    synopsis: "[options]",
    flags: &[REGISTRY, SERVICE, JSON, TOKEN_FILE, CA_FILE, ETCD],
    notes: "",
    run,
};

const JSON: Flag = Flag::switch(
    "json",
    "print the listing as JSON (address, weight, metadata, status, expiry)",
);

fn run(a: Args) -> Result<(), Failure> {
    let d = a.discovery(false)?;
    d.refresh()?;
    if a.switch(&JSON) {
        let servers: Vec<serde_json::Value> = d
            .instances()?
            .iter()
            .map(|i| {
                serde_json::json!({
                    "addr": i.addr(),
                    "weight": i.weight(),
                    "meta": i.meta(),
                    "status": i.status().as_str(),
                    "expires_in_ms": i.expires_in().map(|t| t.as_millis() as u64),
                })
            })
            .collect();
        let listing = serde_json::json!({
            "service": a.service(),
            "index": d.index(),
            "servers": servers,
        });
        return out(&format!("{listing}\n"));
    }
    let servers = d.get_all()?;
    // No index and no server: the seed's registry with an empty service,
    // or no registry at all (a status page, a proxy's 200); only the seed
    // sends X-Myrpc-Servers, empty or not.
    if servers.is_empty() && d.index().is_none() && a.text(&ETCD).is_none() {
        let token = a.token()?;
        is_a_registry(d.url(), token.as_deref())?;
    }
    let mut text = String::new();
    for s in servers {
        text.push_str(&s);
        text.push('\n');
    }
    out(&text)
}

/// Whether `url` answers as a registry does: with X-Myrpc-Index or
/// X-Myrpc-Servers.
pub(super) fn is_a_registry(url: &str, token: Option<&str>) -> Result<(), Failure> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(5)))
        .timeout_recv_body(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut rq = agent.get(url);
    if let Some(t) = token {
        rq = rq.header("Authorization", format!("Bearer {t}"));
    }
    let r = rq
        .call()
        .map_err(|e| Failure::Run(format!("registry {url}: {e}").into()))?;
    let h = r.headers();
    if h.contains_key(HEADER_INDEX) || h.contains_key(HEADER_SERVERS) {
        return Ok(());
    }
    Err(Failure::Run(
        format!(
            "{url} is not a registry: it answered {} without an X-Myrpc-Index or X-Myrpc-Servers \
             header; give --registry the registry's URL, such as \
             http://127.0.0.1:9999/myRPC/registry",
            r.status().as_u16()
        )
        .into(),
    ))
}
