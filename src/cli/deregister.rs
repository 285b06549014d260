//! `regcenter deregister`: remove one address from a service.

use super::{Args, CA_FILE, Command, Failure, Flag, Kind, REGISTRY, SERVICE, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "deregister",
    synopsis: "--addr ADDR [options]",
    flags: &[ADDR, REGISTRY, SERVICE, TOKEN_FILE, CA_FILE],
    notes: "",
    run,
};

const ADDR: Flag = Flag::new("addr", Kind::Text, "ADDR", "the address to remove");

fn run(a: Args) -> Result<(), Failure> {
    let addr = a.required(&ADDR, "deregister")?;
    let options = a.call_options()?;
    if regcenter::deregister_with(a.registry(), a.service(), addr, &options)? {
        return Ok(());
    }
    let service = match a.service() {
        "" => "the default service".to_string(),
        s => format!("service {s:?}"),
    };
    Err(Failure::Run(
        format!("{addr} was not registered in {service} at {}", a.registry()).into(),
    ))
}
