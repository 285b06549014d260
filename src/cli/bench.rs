//! `regcenter bench`: load a registry and report its throughput, or with
//! `--op scale` run a large deployment against it and report what it
//! costs.

use std::time::Duration;

use regcenter::loadgen::{Beats, ListFormat, LoadOptions, Op, ScaleOptions, listening_pid};

use super::{Args, Command, Failure, Flag, Kind, REGISTRY, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "bench",
    synopsis: "[options]",
    flags: &[
        REGISTRY, SERVICE, CLIENTS, DURATION, OP, SERVERS, FORMAT, TOKEN_FILE, SERVICES, CHANGES,
        BEATS, PERIOD, TTL, PID,
    ],
    notes: "\
--op scale: SERVERS (default 10000) in --services renew every --period
with --ttl by --beats, CLIENTS watchers (default 1000) long-poll with
delta=1, --changes membership changes a second for --duration (default
60s). It reports how long a change takes to reach each watcher, errors,
and the CPU, memory, threads and descriptors of the registry's process
(found by its port when on this machine, or --pid). The watchers need a
descriptor each here and two in the registry: start the registry from a
shell with `ulimit -n 8192`; the bench raises its own limit.
",
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
    "concurrent kept-alive connections, with renew-udp\n\
     datagrams in flight, with scale watchers (default 8)",
);
const DURATION: Flag = Flag::new(
    "duration",
    Kind::Duration,
    "D",
    "how long to load (default 10s)",
);
const OP: Flag = Flag::new(
    "op",
    Kind::Text,
    "OP",
    "get | renew | register | mixed | renew-udp | scale\n\
     (default get)",
);
const SERVERS: Flag = Flag::new(
    "servers",
    Kind::Count,
    "K",
    "servers registered first and removed afterwards (default 100)",
);
const SERVICES: Flag = Flag::new(
    "services",
    Kind::Count,
    "N",
    "scale: services the servers are spread over (default 100)",
);
const CHANGES: Flag = Flag::new(
    "changes",
    Kind::Count,
    "N",
    "scale: membership changes a second (default 10)",
);
const BEATS: Flag = Flag::new(
    "beats",
    Kind::Text,
    "HOW",
    "scale: udp | http, how the servers renew (default udp)",
);
const PERIOD: Flag = Flag::new(
    "period",
    Kind::Duration,
    "D",
    "scale: time between a server's renewals (default 5s)",
);
const TTL: Flag = Flag::new(
    "ttl",
    Kind::Duration,
    "D",
    "scale: TTL the servers register with (default 15s)",
);
const PID: Flag = Flag::new(
    "pid",
    Kind::Count,
    "PID",
    "scale: the registry's process, to measure (default: the\n\
     one listening on the registry's port, if on loopback)",
);
const FORMAT: Flag = Flag::new(
    "format",
    Kind::Format,
    "F",
    "text | seed: how GETs ask for the list (default text)",
);

fn run(a: Args) -> Result<(), Failure> {
    let op = match a.text(&OP).unwrap_or("get") {
        "scale" => return scale(&a),
        other => other.parse::<Op>().map_err(|_| {
            Failure::Usage(format!(
                "--op {other:?}: use get, renew, register, mixed, renew-udp or scale"
            ))
        })?,
    };
    if let Some(f) = [&SERVICES, &CHANGES, &BEATS, &PERIOD, &TTL, &PID]
        .into_iter()
        .find(|f| a.last(f).is_some())
    {
        return Err(Failure::Usage(format!(
            "--{} applies to --op scale only",
            f.name
        )));
    }
    let service = a.text(&SERVICE).unwrap_or("bench");
    let clients = a.count(&CLIENTS).unwrap_or(8);
    let duration = a.duration(&DURATION).unwrap_or(Duration::from_secs(10));
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

/// `--op scale`: the large deployment of [`ScaleOptions`].
fn scale(a: &Args) -> Result<(), Failure> {
    if a.last(&SERVICE).is_some() || a.last(&FORMAT).is_some() {
        return Err(Failure::Usage(
            "--service and --format do not apply to --op scale (its services are scale-0, scale-1, ...)"
                .into(),
        ));
    }
    let beats: Beats = a
        .text(&BEATS)
        .unwrap_or("udp")
        .parse()
        .map_err(|e: regcenter::Error| Failure::Usage(format!("--beats: {e}")))?;
    let duration = a.duration(&DURATION).unwrap_or(Duration::from_secs(60));
    if duration.is_zero() {
        return Err(Failure::Usage(
            "--duration must be above zero, such as 60s".into(),
        ));
    }
    let changes = u32::try_from(a.count(&CHANGES).unwrap_or(10))
        .map_err(|_| Failure::Usage("--changes: at most 4294967295 a second".into()))?;
    let pid = match a.count(&PID) {
        Some(p) => Some(
            u32::try_from(p).map_err(|_| Failure::Usage(format!("--pid {p}: no such process")))?,
        ),
        None => loopback_port(a.registry()).and_then(listening_pid),
    };
    let opts = ScaleOptions::new(a.registry())
        .servers(a.count(&SERVERS).unwrap_or(10_000))
        .services(a.count(&SERVICES).unwrap_or(100))
        .watchers(a.count(&CLIENTS).unwrap_or(1_000))
        .changes_per_second(changes)
        .period(a.duration(&PERIOD).unwrap_or(Duration::from_secs(5)))
        .ttl(a.duration(&TTL).unwrap_or(Duration::from_secs(15)))
        .beats(beats)
        .duration(duration)
        .registry_pid(pid)
        .token(a.token()?);
    let measured = pid.map_or_else(
        || "no registry process found".into(),
        |p| format!("pid {p}"),
    );
    eprintln!(
        "regcenter: bench scale against {} ({measured}) for {duration:?}",
        a.registry()
    );
    let report = opts.run_with_progress(|p| {
        if p.elapsed.as_secs().is_multiple_of(10) {
            eprintln!("{:>4}s {:>8} changes", p.elapsed.as_secs(), p.requests);
        }
    })?;
    super::out(&format!("{report}\n"))
}

/// The port of a registry URL on this machine's loopback.
fn loopback_port(url: &str) -> Option<u16> {
    let host = url.strip_prefix("http://")?.split('/').next()?;
    let (ip, port) = host.rsplit_once(':')?;
    matches!(ip, "127.0.0.1" | "localhost" | "[::1]")
        .then(|| port.parse().ok())
        .flatten()
}
