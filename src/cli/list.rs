//! `regcenter list`: print the alive servers, one per line.

use regcenter::Discovery;

use super::{Args, CA_FILE, Command, ETCD, Failure, Flag, REGISTRY, SERVICE, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "list",
    synopsis: "[options]",
    flags: &[REGISTRY, SERVICE, JSON, TOKEN_FILE, CA_FILE, ETCD],
    notes: "",
    run,
};

const JSON: Flag = Flag::switch(
    "json",
    "print the registry's JSON listing (weights, metadata, expiry)",
);

fn run(a: Args) -> Result<(), Failure> {
    if a.switch(&JSON) {
        let options = a.call_options()?;
        print!(
            "{}",
            regcenter::list_json_with(a.registry(), a.service(), &options)?
        );
        return Ok(());
    }
    let d = a.discovery(false)?;
    d.refresh()?;
    for s in d.get_all()? {
        println!("{s}");
    }
    Ok(())
}
