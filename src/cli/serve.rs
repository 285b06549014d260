//! `regcenter serve`: run the registry until a stop signal.

use std::io::ErrorKind;
use std::path::Path;

use regcenter::RegistryServer;
use regcenter::protocol::DEFAULT_PATH;

use super::signals::Signals;
use super::{Args, Command, Failure, Flag, Kind, chain};

pub(super) const COMMAND: Command = Command {
    name: "serve",
    synopsis: "[options]",
    flags: &[
        ADDR,
        PATH,
        TTL,
        MIN_TTL,
        MAX_TTL,
        THREADS,
        MAX_ENTRIES,
        IDLE_TIMEOUT,
        HEADER_TIMEOUT,
        MAX_CONNECTIONS,
        MAX_WATCHERS,
        TOKEN_FILE,
        PROTECT_READS,
        SNAPSHOT,
        SNAPSHOT_INTERVAL,
        TLS_CERT,
        TLS_KEY,
        INSECURE,
        FREE_FORM_ADDRESSES,
        UDP,
        NO_UDP,
        ETCD,
        ETCD_PREFIX,
        ETCD_LEASE,
    ],
    notes: "\
durations are Go-style: 500ms, 5s, 1m30s

signals:
  TERM INT HUP QUIT   shut down gracefully: answer requests in flight, write
                      the final snapshot, exit 0
  USR1                write the snapshot at once (logged) and carry on
  USR2, ALRM, VTALRM, PROF, IO, PWR, XCPU, XFSZ, STKFLT and the real-time
                      signals are logged and ignored
",
    run,
};

const ADDR: Flag = Flag::new(
    "addr",
    Kind::Text,
    "IP:PORT",
    "listen address (default 127.0.0.1:9999)",
);
const PATH: Flag = Flag::new(
    "path",
    Kind::Text,
    "PATH",
    "base path (default /myRPC/registry)",
);
const TTL: Flag = Flag::new(
    "ttl",
    Kind::Duration,
    "D",
    "TTL of entries that ask for none; 0 = never expire (default 5s)",
);
const MIN_TTL: Flag = Flag::new(
    "min-ttl",
    Kind::Duration,
    "D",
    "smallest TTL a server may ask for (default 1s)",
);
const MAX_TTL: Flag = Flag::new(
    "max-ttl",
    Kind::Duration,
    "D",
    "largest TTL a server may ask for (default 1h, at most 72h)",
);
const THREADS: Flag = Flag::new(
    "threads",
    Kind::Count,
    "N",
    "request threads (default: number of cores)",
);
const MAX_ENTRIES: Flag = Flag::new(
    "max-entries",
    Kind::Count,
    "N",
    "most entries held (default 100000)",
);
const IDLE_TIMEOUT: Flag = Flag::new(
    "idle-timeout",
    Kind::Duration,
    "D",
    "close kept-alive connections idle this long (default 60s)",
);
const HEADER_TIMEOUT: Flag = Flag::new(
    "header-timeout",
    Kind::Duration,
    "D",
    "close connections whose request head is not complete\n\
     this long after it started (default 10s)",
);
const MAX_CONNECTIONS: Flag = Flag::new(
    "max-connections",
    Kind::Count,
    "N",
    "most open connections (default: from the descriptor limit)",
);
const MAX_WATCHERS: Flag = Flag::new(
    "max-watchers",
    Kind::Count,
    "N",
    "most long-polls parked at once; beyond it they are\n\
     answered 503 (default: 3/4 of --max-connections)",
);
/// serve's `--token-file`: the token it requires, read like the clients'.
const TOKEN_FILE: Flag = Flag::new(
    "token-file",
    Kind::Text,
    "FILE",
    "require this bearer token for POST and DELETE\n\
     (or set REGCENTER_TOKEN); needed to bind beyond loopback",
);
const PROTECT_READS: Flag = Flag::switch("protect-reads", "require the token for listings too");
const SNAPSHOT: Flag = Flag::new(
    "snapshot",
    Kind::Text,
    "FILE",
    "keep the table in FILE: loaded at start, written every\n\
     --snapshot-interval and at shutdown",
);
const SNAPSHOT_INTERVAL: Flag = Flag::new(
    "snapshot-interval",
    Kind::Duration,
    "D",
    "how often the snapshot is written; a crash loses at most\n\
     the changes of one interval (default 5s)",
);
const TLS_CERT: Flag = Flag::new(
    "tls-cert",
    Kind::Text,
    "FILE",
    "serve HTTPS with this PEM certificate chain, the server's\n\
     first (needs --tls-key; builds with the `tls` feature)",
);
const TLS_KEY: Flag = Flag::new(
    "tls-key",
    Kind::Text,
    "FILE",
    "the unencrypted PEM private key of --tls-cert",
);
const INSECURE: Flag = Flag::switch("insecure", "allow a non-loopback address without a token");

const FREE_FORM_ADDRESSES: Flag = Flag::switch(
    "free-form-addresses",
    "register any visible address, not only proto@host:port\n\
     (and proto@path for protocols such as unix)",
);

const UDP: Flag = Flag::new(
    "udp",
    Kind::Count,
    "PORT",
    "receive renewals over UDP on PORT, 0 for any free one\n\
     (default: the port number of --addr)",
);
const NO_UDP: Flag = Flag::switch(
    "no-udp",
    "receive no renewals over UDP; POST answers then advertise none",
);

const ETCD: Flag = Flag::new(
    "etcd",
    Kind::Text,
    "URL[,URL...]",
    "keep the table in etcd at these endpoints, one registry\n\
     for every front-end on them (builds with the `etcd` feature)",
);
const ETCD_PREFIX: Flag = Flag::new(
    "etcd-prefix",
    Kind::Text,
    "PREFIX",
    "the key prefix in etcd (default /regcenter)",
);
const ETCD_LEASE: Flag = Flag::new(
    "etcd-lease",
    Kind::Duration,
    "D",
    "TTL of this front-end's etcd lease: after its death the\n\
     others take its entries over within it (default 3s)",
);

fn run(a: Args) -> Result<(), Failure> {
    let addr = a.text(&ADDR).unwrap_or("127.0.0.1:9999").to_string();
    let addr = addr.as_str();
    let ip: std::net::SocketAddr = addr.parse().map_err(|_| {
        Failure::Usage(format!(
            "--addr {addr:?}: expected IP:PORT such as 127.0.0.1:9999"
        ))
    })?;
    let token = a.token()?;
    let protect_reads = a.switch(&PROTECT_READS);
    if !ip.ip().is_loopback() && !a.switch(&INSECURE) && token.is_none() {
        return Err(Failure::Usage(format!(
            "refusing to serve on {addr}, which is not a loopback address, without a write token; \
             give --token-file (or REGCENTER_TOKEN), or pass --insecure to do it anyway"
        )));
    }
    if protect_reads && token.is_none() {
        return Err(Failure::Usage(
            "--protect-reads needs a token: give --token-file or set REGCENTER_TOKEN".into(),
        ));
    }
    let mut b = RegistryServer::builder()
        .addr(addr)
        .path(a.text(&PATH).unwrap_or(DEFAULT_PATH));
    if let Some(t) = a.duration(&TTL) {
        b = b.ttl(t);
    }
    if let Some(t) = a.duration(&MIN_TTL) {
        b = b.min_ttl(t);
    }
    if let Some(t) = a.duration(&MAX_TTL) {
        b = b.max_ttl(t);
    }
    if let Some(n) = a.count(&THREADS) {
        b = b.threads(n);
    }
    if let Some(n) = a.count(&MAX_ENTRIES) {
        b = b.max_entries(n);
    }
    if let Some(t) = a.duration(&IDLE_TIMEOUT) {
        b = b.idle_timeout(t);
    }
    if let Some(t) = a.duration(&HEADER_TIMEOUT) {
        b = b.header_timeout(t);
    }
    if let Some(n) = a.count(&MAX_WATCHERS) {
        b = b.max_watchers(n);
    }
    if let Some(n) = a.count(&MAX_CONNECTIONS) {
        b = b.max_connections(n);
    }
    if let Some(t) = token {
        b = b.token(t).protect_reads(protect_reads);
    }
    b = b.free_form_addresses(a.switch(&FREE_FORM_ADDRESSES));
    match (a.count(&UDP), a.switch(&NO_UDP)) {
        (Some(_), true) => {
            return Err(Failure::Usage(
                "--udp and --no-udp contradict each other: give one".into(),
            ));
        }
        (Some(port), false) => {
            let port = u16::try_from(port)
                .map_err(|_| Failure::Usage(format!("--udp {port}: a port is 0 to 65535")))?;
            b = b.udp_port(port);
        }
        (None, true) => b = b.udp(false),
        (None, false) => {}
    }
    let snapshot = a.text(&SNAPSHOT);
    if let Some(path) = snapshot {
        b = b.snapshot(path);
    }
    match a.duration(&SNAPSHOT_INTERVAL) {
        Some(_) if snapshot.is_none() => {
            return Err(Failure::Usage(
                "--snapshot-interval needs --snapshot FILE".into(),
            ));
        }
        Some(every) => b = b.snapshot_interval(every),
        None => {}
    }
    b = etcd(b, &a, snapshot.is_some())?;
    preflight(snapshot)?;
    match (a.text(&TLS_CERT), a.text(&TLS_KEY)) {
        (None, None) => {}
        (Some(_), None) => return Err(Failure::Usage("--tls-cert needs --tls-key FILE".into())),
        (None, Some(_)) => return Err(Failure::Usage("--tls-key needs --tls-cert FILE".into())),
        (Some(cert), Some(key)) => b = tls(b, cert, key)?,
    }
    let signals = Signals::install()?;
    let server = b.start().map_err(|e| start_failure(e, addr))?;
    let sig = signals.wait_for_stop(|| match server.write_snapshot() {
        Ok(Some(path)) => log::info!("signal SIGUSR1: snapshot written to {}", path.display()),
        Ok(None) => log::warn!("signal SIGUSR1: ignored, no --snapshot FILE was given"),
        Err(e) => log::error!("signal SIGUSR1: {}", chain(&e)),
    });
    log::info!("{sig} received, shutting down");
    server.shutdown()?;
    Ok(())
}

/// The start-up checks of what the library only finds out by trying, or
/// words as a setting: each failure is one line naming the flag and the
/// cause, exit 2, before anything is bound or served. (The builder checks
/// the rest at `start`: TTL bounds, counts, that the snapshot's directory
/// exists and is not a file.)
fn preflight(snapshot: Option<&str>) -> Result<(), Failure> {
    if let Some(path) = snapshot {
        snapshot_writable(Path::new(path))?;
    }
    // TLS (`--tls-cert`, `--tls-key`): that each file can be read and
    // holds what it should, and that the two match, is checked here.
    Ok(())
}

/// That a file can be created in the snapshot's directory: access(2),
/// which the library asks, says yes to root everywhere, also where no file
/// can be created (`/proc`) or none may be (another user's directory on
/// NFS). A probe file is created and removed at once.
fn snapshot_writable(path: &Path) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let refuse = |why: String| {
        Err(Failure::Config(
            format!("--snapshot {}: {why}", path.display()).into(),
        ))
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return refuse(format!("{} is not a directory", dir.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return refuse(format!(
                "the directory {} does not exist: create it first",
                dir.display()
            ));
        }
        Err(e) => {
            return refuse(format!(
                "the directory {} cannot be read: {e}",
                dir.display()
            ));
        }
    }
    let name = path
        .file_name()
        .map_or("snapshot".into(), |n| n.to_string_lossy());
    let probe = dir.join(format!(".{name}.probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => refuse(format!(
            "the directory {} cannot be written: {e}",
            dir.display()
        )),
    }
}

/// A start that failed on the listen address is the operator's setting:
/// exit 2, naming `--addr`.
fn start_failure(e: regcenter::Error, addr: &str) -> Failure {
    if let regcenter::Error::Io { source, context } = &e {
        // UDP's port (`--udp`, or the number of --addr's): said as such.
        if context.starts_with("bind UDP") && source.kind() == ErrorKind::AddrInUse {
            return Failure::Config(
                format!(
                    "{context}: the UDP port is in use: give --udp PORT for another, or --no-udp: {source}"
                )
                .into(),
            );
        }
        let why = match source.kind() {
            ErrorKind::AddrInUse => Some("the address is in use (another registry running?)"),
            ErrorKind::AddrNotAvailable => Some("no interface of this machine has that address"),
            _ => None,
        };
        if let Some(why) = why {
            return Failure::Config(format!("--addr {addr}: {why}: {source}").into());
        }
    }
    e.into()
}

/// `--etcd`, `--etcd-prefix`, `--etcd-lease`.
fn etcd(
    b: regcenter::RegistryServerBuilder,
    a: &Args,
    snapshot: bool,
) -> Result<regcenter::RegistryServerBuilder, Failure> {
    let Some(list) = a.text(&ETCD) else {
        for flag in [&ETCD_PREFIX, &ETCD_LEASE] {
            if a.given(flag) {
                return Err(Failure::Usage(format!(
                    "--{} needs --etcd URL[,URL...]",
                    flag.name
                )));
            }
        }
        return Ok(b);
    };
    if snapshot {
        return Err(Failure::Usage(
            "--snapshot and --etcd exclude each other: etcd keeps the table of front-ends on it"
                .into(),
        ));
    }
    on_etcd(b, a, list)
}

#[cfg(feature = "etcd")]
fn on_etcd(
    b: regcenter::RegistryServerBuilder,
    a: &Args,
    list: &str,
) -> Result<regcenter::RegistryServerBuilder, Failure> {
    let mut b = b.etcd(&super::etcd_endpoints(list));
    if let Some(p) = a.text(&ETCD_PREFIX) {
        b = b.etcd_prefix(p);
    }
    if let Some(t) = a.duration(&ETCD_LEASE) {
        b = b.etcd_lease_ttl(t);
    }
    Ok(b)
}

#[cfg(not(feature = "etcd"))]
fn on_etcd(
    _: regcenter::RegistryServerBuilder,
    _: &Args,
    _: &str,
) -> Result<regcenter::RegistryServerBuilder, Failure> {
    super::etcd_builder("").map(|_| unreachable!("refused without the feature"))
}

#[cfg(feature = "tls")]
fn tls(
    b: regcenter::RegistryServerBuilder,
    cert: &str,
    key: &str,
) -> Result<regcenter::RegistryServerBuilder, Failure> {
    Ok(b.tls(cert, key))
}

#[cfg(not(feature = "tls"))]
fn tls(
    _: regcenter::RegistryServerBuilder,
    _: &str,
    _: &str,
) -> Result<regcenter::RegistryServerBuilder, Failure> {
    Err(Failure::Usage(
        super::TLS_NEEDED.replace("{flag}", "--tls-cert"),
    ))
}
