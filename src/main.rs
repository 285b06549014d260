//! The `regcenter` binary: arguments and wiring only.

use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use regcenter::protocol::{DEFAULT_PATH, DEFAULT_REGISTRY_URL, parse_duration};
use regcenter::{Discovery, Heartbeat, RegistryDiscovery, RegistryServer};

const USAGE: &str = "\
regcenter: a service registry speaking the GeeRPC registry protocol

usage:
  regcenter [serve] [options]     run the registry until SIGTERM (or INT, HUP, QUIT)
  regcenter list [options]        print the alive servers, one per line
  regcenter watch [options]       print the list each time it changes
  regcenter register --addr ADDR  keep ADDR registered until SIGTERM (or INT, HUP, QUIT)
  regcenter deregister --addr ADDR
  regcenter bench [options]       load a registry and report its throughput
  regcenter COMMAND --help        options of a command

every command takes --token-file FILE: the registry's bearer token (serve:
the token that POST and DELETE must carry); without it REGCENTER_TOKEN is used.

list, watch and register take --etcd URL[,URL...] to use etcd instead of a
registry (builds with the `etcd` feature).

environment: REGCENTER_LOG=error|warn|info|debug|trace (default info)
";

const SERVE_USAGE: &str = "\
usage: regcenter serve [options]
  --addr IP:PORT      listen address (default 127.0.0.1:9999)
  --path PATH         base path (default /myRPC/registry)
  --ttl D             TTL of entries that ask for none; 0 = never expire (default 5s)
  --min-ttl D         smallest TTL a server may ask for (default 1s)
  --max-ttl D         largest TTL a server may ask for (default 1h, at most 72h)
  --threads N         request threads (default: number of cores)
  --max-entries N     most entries held (default 100000)
  --idle-timeout D    close kept-alive connections idle this long (default 60s)
  --header-timeout D  close connections whose request head is not complete
                      this long after it started (default 10s)
  --max-connections N most open connections (default: from the descriptor limit)
  --max-watchers N    most long-polls parked at once; beyond it they are
                      answered 503 (default: 3/4 of --max-connections)
  --token-file FILE   require this bearer token for POST and DELETE
                      (or set REGCENTER_TOKEN); needed to bind beyond loopback
  --protect-reads     require the token for listings too
  --snapshot FILE     keep the table in FILE: loaded at start, written every
                      --snapshot-interval and at shutdown
  --snapshot-interval D
                      how often the snapshot is written; a crash loses at most
                      the changes of one interval (default 5s)
  --insecure          allow a non-loopback address without a token
durations are Go-style: 500ms, 5s, 1m30s

signals:
  TERM INT HUP QUIT   shut down gracefully: answer requests in flight, write
                      the final snapshot, exit 0
  USR1                write the snapshot at once (logged) and carry on
  USR2, ALRM, VTALRM, PROF, IO, PWR, XCPU, XFSZ, STKFLT and the real-time
                      signals are logged and ignored
";

const LIST_USAGE: &str = "\
usage: regcenter list [options]
  --registry URL      registry URL (default http://127.0.0.1:9999/myRPC/registry)
  --service NAME      service (default: the default service)
  --json              print the registry's JSON listing (weights, metadata, expiry)
";

const WATCH_USAGE: &str = "\
usage: regcenter watch [options]
  --registry URL      registry URL (default http://127.0.0.1:9999/myRPC/registry)
  --service NAME      service (default: the default service)
prints '# index N' and the servers, one per line, at start and on every change,
until SIGTERM (or INT, HUP, QUIT)
";

const REGISTER_USAGE: &str = "\
usage: regcenter register --addr ADDR [options]
  --addr ADDR         the address to keep registered, e.g. tcp@127.0.0.1:7001
  --registry URL      registry URL (default http://127.0.0.1:9999/myRPC/registry)
  --service NAME      service (default: the default service)
  --period D          time between beats (default: a third of the registry's TTL)
  --ttl D             TTL to ask for (default: the registry's)
  --weight N          weight for weighted selection, 1-10000 (default 1)
  --meta K=V          a metadata label; repeat for more
";

const DEREGISTER_USAGE: &str = "\
usage: regcenter deregister --addr ADDR [options]
  --addr ADDR         the address to remove
  --registry URL      registry URL (default http://127.0.0.1:9999/myRPC/registry)
  --service NAME      service (default: the default service)
";

const BENCH_USAGE: &str = "\
usage: regcenter bench [options]
  --registry URL      registry URL (default http://127.0.0.1:9999/myRPC/registry)
  --service NAME      service to load (default bench)
  --clients N         concurrent kept-alive connections (default 8)
  --duration D        how long to load (default 10s)
  --op OP             get | renew | register | mixed (default get)
  --servers K         servers registered first and removed afterwards (default 100)
  --format F          text | seed: how GETs ask for the list (default text)
";

/// A failure and the exit code it maps to: 2 for usage and configuration
/// errors (nothing was started), 1 for the rest.
enum Failure {
    Usage(String),
    Config(Box<dyn std::error::Error>),
    Run(Box<dyn std::error::Error>),
}

impl From<lexopt::Error> for Failure {
    fn from(e: lexopt::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

impl From<regcenter::Error> for Failure {
    fn from(e: regcenter::Error) -> Self {
        match e {
            regcenter::Error::InvalidConfig { .. } => Failure::Config(Box::new(e)),
            e => Failure::Run(Box::new(e)),
        }
    }
}

fn main() -> ExitCode {
    init_log();
    match run(std::env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("regcenter: {msg} (see regcenter --help)");
            ExitCode::from(2)
        }
        Err(Failure::Config(e)) => {
            eprintln!("regcenter: {}", chain(&*e));
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("regcenter: {}", chain(&*e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by ": ", each once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}

#[derive(Default)]
struct Args {
    addr: Option<String>,
    path: Option<String>,
    registry: Option<String>,
    service: Option<String>,
    ttl: Option<Duration>,
    min_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    period: Option<Duration>,
    threads: Option<usize>,
    max_entries: Option<usize>,
    idle_timeout: Option<Duration>,
    header_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_watchers: Option<usize>,
    clients: Option<usize>,
    duration: Option<Duration>,
    op: Option<regcenter::loadgen::Op>,
    servers: Option<usize>,
    format: Option<regcenter::loadgen::ListFormat>,
    weight: Option<u32>,
    meta: Vec<(String, String)>,
    insecure: bool,
    json: bool,
    token_file: Option<String>,
    protect_reads: bool,
    snapshot: Option<String>,
    snapshot_interval: Option<Duration>,
    etcd: Option<String>,
}

fn run(argv: Vec<std::ffi::OsString>) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(argv);
    let mut command: Option<String> = None;
    let mut a = Args::default();
    let mut help = false;
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => help = true,
            Long("addr") => a.addr = Some(p.value()?.string()?),
            Long("path") => a.path = Some(p.value()?.string()?),
            Long("registry") => a.registry = Some(p.value()?.string()?),
            Long("service") => a.service = Some(p.value()?.string()?),
            Long("ttl") => a.ttl = Some(duration(&mut p, "--ttl")?),
            Long("min-ttl") => a.min_ttl = Some(duration(&mut p, "--min-ttl")?),
            Long("max-ttl") => a.max_ttl = Some(duration(&mut p, "--max-ttl")?),
            Long("period") => a.period = Some(duration(&mut p, "--period")?),
            Long("threads") => a.threads = Some(p.value()?.parse()?),
            Long("max-entries") => a.max_entries = Some(p.value()?.parse()?),
            Long("idle-timeout") => a.idle_timeout = Some(duration(&mut p, "--idle-timeout")?),
            Long("header-timeout") => {
                a.header_timeout = Some(duration(&mut p, "--header-timeout")?)
            }
            Long("max-connections") => a.max_connections = Some(p.value()?.parse()?),
            Long("max-watchers") => a.max_watchers = Some(p.value()?.parse()?),
            Long("weight") => a.weight = Some(p.value()?.parse()?),
            Long("meta") => {
                let kv = p.value()?.string()?;
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    Failure::Usage(format!("--meta {kv:?}: write it as key=value"))
                })?;
                a.meta.push((k.to_string(), v.to_string()));
            }
            Long("insecure") => a.insecure = true,
            Long("json") => a.json = true,
            Long("token-file") => a.token_file = Some(p.value()?.string()?),
            Long("protect-reads") => a.protect_reads = true,
            Long("snapshot") => a.snapshot = Some(p.value()?.string()?),
            Long("snapshot-interval") => {
                a.snapshot_interval = Some(duration(&mut p, "--snapshot-interval")?)
            }
            Long("etcd") => a.etcd = Some(p.value()?.string()?),
            Long("clients") => a.clients = Some(p.value()?.parse()?),
            Long("duration") => a.duration = Some(duration(&mut p, "--duration")?),
            Long("op") => {
                let v = p.value()?.string()?;
                a.op = Some(
                    v.parse()
                        .map_err(|e: regcenter::Error| Failure::Usage(format!("--op: {e}")))?,
                );
            }
            Long("servers") => a.servers = Some(p.value()?.parse()?),
            Long("format") => {
                a.format = Some(match p.value()?.string()?.as_str() {
                    "text" => regcenter::loadgen::ListFormat::Text,
                    "seed" => regcenter::loadgen::ListFormat::Seed,
                    other => {
                        return Err(Failure::Usage(format!(
                            "--format {other:?}: use text or seed"
                        )));
                    }
                })
            }
            Value(v) if command.is_none() => command = Some(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let command = command.unwrap_or_else(|| "serve".into());
    let (usage, allowed): (&str, &[&str]) = match command.as_str() {
        "serve" => (
            SERVE_USAGE,
            &[
                "addr",
                "path",
                "ttl",
                "min-ttl",
                "max-ttl",
                "threads",
                "max-entries",
                "idle-timeout",
                "header-timeout",
                "max-connections",
                "max-watchers",
                "insecure",
                "token-file",
                "protect-reads",
                "snapshot",
                "snapshot-interval",
            ],
        ),
        "list" => (
            LIST_USAGE,
            &["registry", "service", "json", "token-file", "etcd"],
        ),
        "watch" => (WATCH_USAGE, &["registry", "service", "token-file", "etcd"]),
        "register" => (
            REGISTER_USAGE,
            &[
                "addr",
                "registry",
                "service",
                "period",
                "ttl",
                "weight",
                "meta",
                "token-file",
                "etcd",
            ],
        ),
        "deregister" => (
            DEREGISTER_USAGE,
            &["addr", "registry", "service", "token-file"],
        ),
        "bench" => (
            BENCH_USAGE,
            &[
                "registry",
                "service",
                "clients",
                "duration",
                "op",
                "servers",
                "format",
                "token-file",
            ],
        ),
        "help" => {
            print!("{USAGE}");
            return Ok(());
        }
        other => return Err(Failure::Usage(format!("unknown command {other:?}"))),
    };
    if help {
        print!(
            "{}",
            if command == "serve" && std::env::args().len() <= 2 {
                USAGE
            } else {
                usage
            }
        );
        return Ok(());
    }
    if let Some(flag) = a.given().into_iter().find(|f| !allowed.contains(f)) {
        return Err(Failure::Usage(format!(
            "--{flag} does not apply to {command}"
        )));
    }
    match command.as_str() {
        "serve" => serve(a),
        "list" => list(a),
        "register" => register(a),
        "watch" => watch(a),
        "bench" => bench(a),
        _ => deregister(a),
    }
}

impl Args {
    /// The names of the options that were given, to refuse misplaced ones.
    fn given(&self) -> Vec<&'static str> {
        let mut g = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                g.push(name);
            }
        };
        add(self.addr.is_some(), "addr");
        add(self.path.is_some(), "path");
        add(self.registry.is_some(), "registry");
        add(self.service.is_some(), "service");
        add(self.ttl.is_some(), "ttl");
        add(self.min_ttl.is_some(), "min-ttl");
        add(self.max_ttl.is_some(), "max-ttl");
        add(self.period.is_some(), "period");
        add(self.threads.is_some(), "threads");
        add(self.max_entries.is_some(), "max-entries");
        add(self.idle_timeout.is_some(), "idle-timeout");
        add(self.header_timeout.is_some(), "header-timeout");
        add(self.max_connections.is_some(), "max-connections");
        add(self.max_watchers.is_some(), "max-watchers");
        add(self.weight.is_some(), "weight");
        add(!self.meta.is_empty(), "meta");
        add(self.insecure, "insecure");
        add(self.json, "json");
        add(self.token_file.is_some(), "token-file");
        add(self.protect_reads, "protect-reads");
        add(self.snapshot.is_some(), "snapshot");
        add(self.snapshot_interval.is_some(), "snapshot-interval");
        add(self.etcd.is_some(), "etcd");
        add(self.clients.is_some(), "clients");
        add(self.duration.is_some(), "duration");
        add(self.op.is_some(), "op");
        add(self.servers.is_some(), "servers");
        add(self.format.is_some(), "format");
        g
    }

    fn registry(&self) -> &str {
        self.registry.as_deref().unwrap_or(DEFAULT_REGISTRY_URL)
    }

    fn service(&self) -> &str {
        self.service.as_deref().unwrap_or("")
    }

    /// The bearer token: from `--token-file`, else `REGCENTER_TOKEN`. Never
    /// from a command-line value, which every user of the machine sees. A
    /// file that cannot be read or is blank, and a variable that is set but
    /// blank, are refused alike: either would otherwise switch auth off.
    fn token(&self) -> Result<Option<String>, Failure> {
        let config = |msg: String| Failure::Config(msg.into());
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config(format!("--token-file {path}: reading it failed: {e}")))?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(config(format!(
                    "--token-file {path}: the file is empty; put the token in it"
                )));
            }
            return Ok(Some(token));
        }
        match std::env::var_os("REGCENTER_TOKEN") {
            None => Ok(None),
            Some(v) => match v.to_str().map(str::trim) {
                Some("") => Err(config(
                    "REGCENTER_TOKEN is set but blank: set it to the token, \
                     or unset it to run without one"
                        .into(),
                )),
                Some(t) => Ok(Some(t.to_string())),
                None => Err(config("REGCENTER_TOKEN is not valid UTF-8".into())),
            },
        }
    }

    /// A discovery of the registry, or of etcd with `--etcd`.
    fn discovery(&self, watch: bool) -> Result<RegistryDiscovery, Failure> {
        let mut b = match &self.etcd {
            Some(list) => etcd_builder(list)?,
            None => RegistryDiscovery::builder(self.registry()),
        };
        b = b.service(self.service());
        if watch {
            b = b.refresh_period(Duration::from_secs(3600)).watch(true);
        }
        if let Some(t) = self.token()? {
            b = b.token(t);
        }
        Ok(b.build()?)
    }

    fn required_addr(&self, command: &str) -> Result<&str, Failure> {
        self.addr
            .as_deref()
            .ok_or_else(|| Failure::Usage(format!("{command} needs --addr ADDR")))
    }
}

fn duration(p: &mut lexopt::Parser, flag: &str) -> Result<Duration, Failure> {
    use lexopt::ValueExt as _;
    let v = p.value()?.string()?;
    parse_duration(&v).map_err(|e| Failure::Usage(format!("{flag}: {e}")))
}

fn serve(a: Args) -> Result<(), Failure> {
    let addr = a.addr.clone().unwrap_or_else(|| "127.0.0.1:9999".into());
    let ip: std::net::SocketAddr = addr.parse().map_err(|_| {
        Failure::Usage(format!(
            "--addr {addr:?}: expected IP:PORT such as 127.0.0.1:9999"
        ))
    })?;
    let token = a.token()?;
    if !ip.ip().is_loopback() && !a.insecure && token.is_none() {
        return Err(Failure::Usage(format!(
            "refusing to serve on {addr}, which is not a loopback address, without a write token; \
             give --token-file (or REGCENTER_TOKEN), or pass --insecure to do it anyway"
        )));
    }
    if a.protect_reads && token.is_none() {
        return Err(Failure::Usage(
            "--protect-reads needs a token: give --token-file or set REGCENTER_TOKEN".into(),
        ));
    }
    let mut b = RegistryServer::builder()
        .addr(addr)
        .path(a.path.clone().unwrap_or_else(|| DEFAULT_PATH.into()));
    if let Some(t) = a.ttl {
        b = b.ttl(t);
    }
    if let Some(t) = a.min_ttl {
        b = b.min_ttl(t);
    }
    if let Some(t) = a.max_ttl {
        b = b.max_ttl(t);
    }
    if let Some(n) = a.threads {
        b = b.threads(n);
    }
    if let Some(n) = a.max_entries {
        b = b.max_entries(n);
    }
    if let Some(t) = a.idle_timeout {
        b = b.idle_timeout(t);
    }
    if let Some(t) = a.header_timeout {
        b = b.header_timeout(t);
    }
    if let Some(n) = a.max_watchers {
        b = b.max_watchers(n);
    }
    if let Some(n) = a.max_connections {
        b = b.max_connections(n);
    }
    if let Some(t) = token {
        b = b.token(t).protect_reads(a.protect_reads);
    }
    if let Some(path) = &a.snapshot {
        b = b.snapshot(path);
    }
    match a.snapshot_interval {
        Some(_) if a.snapshot.is_none() => {
            return Err(Failure::Usage(
                "--snapshot-interval needs --snapshot FILE".into(),
            ));
        }
        Some(every) => b = b.snapshot_interval(every),
        None => {}
    }
    let signals = Signals::install()?;
    let server = b.start()?;
    let sig = signals.wait_for_stop(|| match server.write_snapshot() {
        Ok(Some(path)) => log::info!("signal SIGUSR1: snapshot written to {}", path.display()),
        Ok(None) => log::warn!("signal SIGUSR1: ignored, no --snapshot FILE was given"),
        Err(e) => log::error!("signal SIGUSR1: {}", chain(&e)),
    });
    log::info!("{sig} received, shutting down");
    server.shutdown()?;
    Ok(())
}

fn list(a: Args) -> Result<(), Failure> {
    if a.json {
        let token = a.token()?;
        print!(
            "{}",
            regcenter::list_json(a.registry(), a.service(), token.as_deref())?
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

fn watch(a: Args) -> Result<(), Failure> {
    let signals = Signals::install()?;
    let d = a.discovery(true)?;
    let mut seen = None;
    loop {
        match signals.next(Some(Duration::ZERO)) {
            Ok(Asked::Stop(_)) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Asked::Snapshot) => log_ignored(libc::SIGUSR1),
            Ok(Asked::Ignore(sig)) => log_ignored(sig),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let index = d.wait_for_change(seen, Duration::from_millis(200));
        if index != seen {
            seen = index;
            let servers = d.get_all()?;
            let mut out = format!("# index {}\n", index.map_or("-".into(), |i| i.to_string()));
            for s in servers {
                out.push_str(&s);
                out.push('\n');
            }
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::Run(Box::new(e)))?;
        }
    }
    d.stop()?;
    Ok(())
}

/// Sets `register`'s options on a heartbeat's or an etcd registration's
/// builder: the two have these setters, but no type in common.
macro_rules! announce_options {
    ($builder:expr, $a:expr) => {{
        let mut b = $builder.service($a.service());
        if let Some(p) = $a.period {
            b = b.period(p);
        }
        if let Some(t) = $a.ttl {
            b = b.ttl(t);
        }
        if let Some(w) = $a.weight {
            b = b.weight(w);
        }
        for (k, v) in &$a.meta {
            b = b.meta(k, v);
        }
        b
    }};
}

fn register(a: Args) -> Result<(), Failure> {
    let addr = a.required_addr("register")?;
    let token = a.token()?;
    let signals = Signals::install()?;
    if let Some(list) = &a.etcd {
        // An etcd registration sends no bearer token: `--token` does not apply.
        return register_etcd(list, addr, &a, signals);
    }
    let mut builder = announce_options!(Heartbeat::builder(a.registry(), addr), a);
    if let Some(t) = token {
        builder = builder.token(t);
    }
    let hb = builder.start()?;
    eprintln!("regcenter: keeping {addr} registered at {}", hb.url());
    // The heartbeat ends on its own when the registry refuses it for good
    // (a rotated token answered 401): then exit 1 with the reason, rather
    // than run on as if the server were still registered.
    loop {
        match signals.next(Some(HEARTBEAT_CHECK)) {
            Ok(Asked::Stop(sig)) => {
                log::info!("{} received, deregistering {addr}", signal_name(sig));
                break;
            }
            Ok(Asked::Snapshot) => log_ignored(libc::SIGUSR1),
            Ok(Asked::Ignore(sig)) => log_ignored(sig),
            Err(RecvTimeoutError::Timeout) if hb.is_running() => {}
            Err(RecvTimeoutError::Timeout) => {
                let source = hb.stop().err();
                return Err(Failure::Run(Box::new(HeartbeatEnded {
                    addr: addr.to_string(),
                    source,
                })));
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    hb.stop()?;
    Ok(())
}

/// How often `register` looks whether its heartbeat still runs.
const HEARTBEAT_CHECK: Duration = Duration::from_millis(200);

/// `register`'s heartbeat ended on its own; the source says why.
#[derive(Debug)]
struct HeartbeatEnded {
    addr: String,
    source: Option<regcenter::Error>,
}

impl std::fmt::Display for HeartbeatEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the heartbeat of {} ended, so it is no longer renewed",
            self.addr
        )
    }
}

impl std::error::Error for HeartbeatEnded {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

fn bench(a: Args) -> Result<(), Failure> {
    use regcenter::loadgen::{ListFormat, LoadOptions, Op};
    let opts = LoadOptions::new(a.registry())
        .service(a.service.as_deref().unwrap_or("bench"))
        .clients(a.clients.unwrap_or(8))
        .duration(a.duration.unwrap_or(Duration::from_secs(10)))
        .op(a.op.unwrap_or(Op::Get))
        .servers(a.servers.unwrap_or(100))
        .format(a.format.unwrap_or(ListFormat::Text))
        .token(a.token()?);
    // Progress once a second on stderr, so that stdout holds the report only.
    let report = opts.run_with_progress(|p| {
        eprintln!(
            "{:>4}s {:>11} requests {:>10.0} req/s",
            p.elapsed.as_secs(),
            p.requests,
            p.rate()
        );
    })?;
    println!("{report}");
    Ok(())
}

#[cfg(feature = "etcd")]
fn etcd_builder(list: &str) -> Result<regcenter::RegistryDiscoveryBuilder, Failure> {
    let endpoints: Vec<&str> = list.split(',').filter(|e| !e.is_empty()).collect();
    Ok(RegistryDiscovery::etcd(&endpoints))
}

#[cfg(not(feature = "etcd"))]
fn etcd_builder(_: &str) -> Result<regcenter::RegistryDiscoveryBuilder, Failure> {
    Err(Failure::Usage(
        "--etcd needs a regcenter built with the etcd feature (cargo build --features etcd)".into(),
    ))
}

#[cfg(feature = "etcd")]
fn register_etcd(list: &str, addr: &str, a: &Args, signals: Signals) -> Result<(), Failure> {
    let endpoints: Vec<&str> = list.split(',').filter(|e| !e.is_empty()).collect();
    let reg =
        announce_options!(regcenter::EtcdRegistration::builder(&endpoints, addr), a).start()?;
    eprintln!(
        "regcenter: keeping {addr} registered in etcd as {}",
        reg.key()
    );
    let sig = signals.wait_for_stop(|| log_ignored(libc::SIGUSR1));
    log::info!("{sig} received, revoking {addr}");
    reg.stop()?;
    Ok(())
}

#[cfg(not(feature = "etcd"))]
fn register_etcd(_: &str, _: &str, _: &Args, _: Signals) -> Result<(), Failure> {
    etcd_builder("").map(drop)
}

fn deregister(a: Args) -> Result<(), Failure> {
    let addr = a.required_addr("deregister")?;
    let token = a.token()?;
    if !regcenter::deregister(a.registry(), a.service(), addr, token.as_deref())? {
        eprintln!("regcenter: {addr} was not registered");
    }
    Ok(())
}

/// What a signal asks of a long-running command (README, "Signals").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// SIGINT, SIGTERM, SIGHUP, SIGQUIT: stop gracefully (serve writes its
    /// final snapshot, register deregisters).
    Stop(i32),
    /// SIGUSR1: serve writes its snapshot at once.
    Snapshot,
    /// Another signal whose default would end the process: logged only.
    Ignore(i32),
}

/// Signals that stop a command gracefully.
const STOP_SIGNALS: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Signals whose default action ends the process and that mean nothing
/// here: a stray `kill -USR2` or an expired timer must not cost the table.
fn ignored_signals() -> Vec<i32> {
    let mut v = vec![
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGXCPU,
        libc::SIGXFSZ,
    ];
    #[cfg(target_os = "linux")]
    {
        v.extend([libc::SIGPWR, libc::SIGSTKFLT]);
        // The real-time signals end the process by default too.
        v.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    }
    v
}

/// Every signal that would end the process, caught from before the work
/// starts, each with a safe meaning ([`Asked`]). Not caught: SIGKILL and
/// SIGSTOP (nobody can), and SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT,
/// SIGTRAP and SIGSYS, which report a fault of the process itself and keep
/// their default (a handler that returns would fault again).
///
/// A thread reads them and hands them over a channel, so a command can wait
/// for the next one with a timeout; dropping the handle ends and joins it.
struct Signals {
    rx: std::sync::mpsc::Receiver<i32>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Signals {
    fn install() -> Result<Signals, Failure> {
        let all = STOP_SIGNALS
            .into_iter()
            .chain([libc::SIGUSR1])
            .chain(ignored_signals());
        let mut signals = signal_hook::iterator::Signals::new(all)
            .map_err(|e| Failure::Run(format!("installing signal handlers failed: {e}").into()))?;
        let handle = signals.handle();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("regcenter-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if tx.send(sig).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Failure::Run(format!("spawning the signal thread failed: {e}").into()))?;
        Ok(Signals {
            rx,
            handle,
            thread: Some(thread),
        })
    }

    /// The next signal, waiting at most `within` (`None`: until one
    /// comes). `Disconnected` when the reading thread is gone (it is not,
    /// before the handle is dropped).
    fn next(&self, within: Option<Duration>) -> Result<Asked, RecvTimeoutError> {
        let sig = match within {
            None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected)?,
            Some(d) => self.rx.recv_timeout(d)?,
        };
        Ok(if STOP_SIGNALS.contains(&sig) {
            Asked::Stop(sig)
        } else if sig == libc::SIGUSR1 {
            Asked::Snapshot
        } else {
            Asked::Ignore(sig)
        })
    }

    /// Waits for a stop signal; logs the others (`on_snapshot` answers
    /// SIGUSR1). Returns the stop signal's name.
    fn wait_for_stop(&self, mut on_snapshot: impl FnMut()) -> String {
        loop {
            match self.next(None) {
                Ok(Asked::Stop(sig)) => return signal_name(sig),
                Ok(Asked::Snapshot) => on_snapshot(),
                Ok(Asked::Ignore(sig)) => log_ignored(sig),
                // The reading thread is gone: nothing could stop us later.
                Err(_) => return "none (the signal thread ended)".into(),
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn signal_name(sig: i32) -> String {
    match signal_hook::low_level::signal_name(sig) {
        Some(name) => format!("signal {sig} ({name})"),
        None => format!("signal {sig}"),
    }
}

fn log_ignored(sig: i32) {
    log::warn!("{} received: ignored", signal_name(sig));
}

/// A stderr logger; the library only uses the `log` macros.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level() && m.target().starts_with("regcenter")
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} {}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn init_log() {
    let level = std::env::var("REGCENTER_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
