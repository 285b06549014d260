//! `regcenter list`: print the alive servers, one per line.

use regcenter::Discovery;

use super::{Args, Command, ETCD, Failure, Flag, REGISTRY, SERVICE, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "list",
    synopsis: "[options]",
    flags: &[REGISTRY, SERVICE, JSON, TOKEN_FILE, ETCD],
    notes: "",
    run,
};

const JSON: Flag = Flag::switch(
    "json",
    "print the registry's JSON listing (weights, metadata, expiry)",
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
        println!("{listing}");
        return Ok(());
    }
    for s in d.get_all()? {
        println!("{s}");
    }
    Ok(())
}
