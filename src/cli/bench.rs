//! `regcenter bench`: load a registry and report its throughput.

use std::time::Duration;

use regcenter::loadgen::{ListFormat, LoadOptions, Op};

use super::{Args, Command, Failure, Flag, Kind, REGISTRY, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "bench",
    synopsis: "[options]",
    flags: &[
        REGISTRY, SERVICE, CLIENTS, DURATION, OP, SERVERS, FORMAT, TOKEN_FILE,
    ],
    notes: "",
    run,
};

/// bench's `--service`, which defaults to a service of its own.
const SERVICE: Flag = Flag::new(
    "service",
    Kind::Text,
    "NAME",
    "service to load (default bench)",
);
const CLIENTS: Flag = Flag::new(
    "clients",
    Kind::Count,
    "N",
    "concurrent kept-alive connections, or with renew-udp\n\
     datagrams in flight (default 8)",
);
const DURATION: Flag = Flag::new(
    "duration",
    Kind::Duration,
    "D",
    "how long to load (default 10s)",
);
const OP: Flag = Flag::new(
    "op",
    Kind::Op,
    "OP",
    "get | renew | register | mixed | renew-udp (default get)",
);
const SERVERS: Flag = Flag::new(
    "servers",
    Kind::Count,
    "K",
    "servers registered first and removed afterwards (default 100)",
);
const FORMAT: Flag = Flag::new(
    "format",
    Kind::Format,
    "F",
    "text | seed: how GETs ask for the list (default text)",
);

fn run(a: Args) -> Result<(), Failure> {
    let service = a.text(&SERVICE).unwrap_or("bench");
    let clients = a.count(&CLIENTS).unwrap_or(8);
    let duration = a.duration(&DURATION).unwrap_or(Duration::from_secs(10));
    let op = a.op(&OP).unwrap_or(Op::Get);
    let servers = a.count(&SERVERS).unwrap_or(100);
    let format = a.format(&FORMAT).unwrap_or(ListFormat::Text);
    if duration.is_zero() {
        return Err(Failure::Usage(
            "--duration must be above zero, such as 10s".into(),
        ));
    }
    let opts = LoadOptions::new(a.registry())
        .service(service)
        .clients(clients)
        .duration(duration)
        .op(op)
        .servers(servers)
        .format(format)
        .token(a.token()?);
    let op_name = match op {
        Op::Get => "get",
        Op::Renew => "renew",
        Op::Register => "register",
        Op::Mixed => "mixed",
        Op::RenewUdp => "renew-udp",
    };
    let target = format!("{}/{service}", a.registry().trim_end_matches('/'));
    eprintln!(
        "regcenter: bench {op_name} against {target}: {clients} clients, {servers} servers, for {duration:?}"
    );
    // Progress once a second on stderr, so that stdout holds the report only.
    let report = opts.run_with_progress(|p| {
        eprintln!(
            "{:>4}s {:>11} requests {:>10.0} req/s",
            p.elapsed.as_secs(),
            p.requests,
            p.rate()
        );
    })?;
    super::out(&format!("{report}\n"))
}
