//! `regcenter drain` and `regcenter undrain`: set the status of one
//! registered address, once.

use regcenter::{Error, Status};

use super::{Args, CA_FILE, Command, Failure, Flag, Kind, REGISTRY, SERVICE, TOKEN_FILE};

pub(super) const DRAIN: Command = Command {
    name: "drain",
    synopsis: "--addr ADDR [options]",
    flags: &[ADDR, REGISTRY, SERVICE, TOKEN_FILE, CA_FILE],
    notes: "\
keeps ADDR registered but no longer handed out; its weight, metadata and
deadline stay as they are. A heartbeat that sends its own status (a library
Heartbeat after drain or undrain) overrides it at its next beat.
",
    run: |a| run(a, Status::Draining),
};

pub(super) const UNDRAIN: Command = Command {
    name: "undrain",
    synopsis: "--addr ADDR [options]",
    flags: &[ADDR, REGISTRY, SERVICE, TOKEN_FILE, CA_FILE],
    notes: "hands ADDR out again after a drain\n",
    run: |a| run(a, Status::Up),
};

const ADDR: Flag = Flag::new(
    "addr",
    Kind::Text,
    "ADDR",
    "the registered address, e.g. tcp@127.0.0.1:7001",
);

fn run(a: Args, status: Status) -> Result<(), Failure> {
    let command = match status {
        Status::Draining => "drain",
        _ => "undrain",
    };
    let addr = a.required(&ADDR, command)?;
    let options = a.call_options()?;
    match regcenter::set_status(a.registry(), a.service(), addr, status, &options) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Failure::Run(
            format!(
                "{addr} is not registered in {} at {}; nothing to {command}",
                match a.service() {
                    "" => "the default service".to_string(),
                    s => format!("service {s:?}"),
                },
                a.registry()
            )
            .into(),
        )),
        // Our own input, or the registry refusing it as invalid: as a bad
        // flag, nothing was changed and retrying will not help.
        Err(
            e @ (Error::InvalidAddr { .. }
            | Error::InvalidService { .. }
            | Error::InvalidConfig { .. }
            | Error::Status { status: 400, .. }),
        ) => Err(Failure::Config(Box::new(e))),
        Err(e) => Err(Failure::Run(Box::new(e))),
    }
}
