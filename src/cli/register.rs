//! `regcenter register`: keep one address registered until a stop signal.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use regcenter::Heartbeat;

use super::signals::{Asked, Signals, log_ignored, signal_name};
use super::{Args, CA_FILE, Command, ETCD, Failure, Flag, Kind, REGISTRY, SERVICE, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "register",
    synopsis: "--addr ADDR [options]",
    flags: &[
        ADDR, REGISTRY, ALSO, SERVICE, PERIOD, TTL, WEIGHT, META, TOKEN_FILE, CA_FILE, ETCD,
    ],
    notes: "",
    run,
};

const ADDR: Flag = Flag::new(
    "addr",
    Kind::Text,
    "ADDR",
    "the address to keep registered, e.g. tcp@127.0.0.1:7001",
);
const ALSO: Flag = Flag::new(
    "also",
    Kind::Text,
    "URL",
    "beat to this registry too (another front-end of the\n\
     same etcd, or a second registry); repeat for more",
);
const PERIOD: Flag = Flag::new(
    "period",
    Kind::Duration,
    "D",
    "time between beats (default: a third of the registry's TTL)",
);
const TTL: Flag = Flag::new(
    "ttl",
    Kind::Duration,
    "D",
    "TTL to ask for (default: the registry's)",
);
const WEIGHT: Flag = Flag::new(
    "weight",
    Kind::Weight,
    "N",
    "weight for weighted selection, 1-10000 (default 1)",
);
const META: Flag = Flag::new(
    "meta",
    Kind::Meta,
    "K=V",
    "a metadata label; repeat for more",
);

/// Sets `register`'s options on a heartbeat's or an etcd registration's
/// builder: the two have these setters, but no type in common.
macro_rules! announce_options {
    ($builder:expr, $a:expr) => {{
        let mut b = $builder.service($a.service());
        if let Some(p) = $a.duration(&PERIOD) {
            b = b.period(p);
        }
        if let Some(t) = $a.duration(&TTL) {
            b = b.ttl(t);
        }
        if let Some(w) = $a.weight(&WEIGHT) {
            b = b.weight(w);
        }
        for (k, v) in $a.pairs(&META) {
            b = b.meta(k, v);
        }
        let ca = $a.ca_file()?;
        #[cfg(feature = "tls")]
        if let Some(ca) = ca {
            b = b.ca_file(ca);
        }
        #[cfg(not(feature = "tls"))]
        let _ = ca;
        b
    }};
}

fn run(a: Args) -> Result<(), Failure> {
    let addr = a.required(&ADDR, "register")?;
    let token = a.token()?;
    let signals = Signals::install()?;
    if let Some(list) = a.text(&ETCD) {
        // An etcd registration sends no bearer token: `--token-file` does
        // not apply to it.
        if a.given(&ALSO) {
            return Err(Failure::Usage(
                "--also is for registries; with --etcd the endpoints are one cluster".into(),
            ));
        }
        return register_etcd(list, addr, &a, signals);
    }
    let mut builder = announce_options!(Heartbeat::builder(a.registry(), addr), a);
    for url in a.texts(&ALSO) {
        builder = builder.also(url);
    }
    if let Some(t) = token {
        builder = builder.token(t);
    }
    let hb = builder.start()?;
    // Said once the registry has taken it, not before: the first beat may
    // have met a registry that is down (the heartbeat logs why).
    let mut announced = false;
    let mut announce = |hb: &Heartbeat| {
        if !announced && hb.beats() > 0 {
            announced = true;
            eprintln!(
                "regcenter: keeping {addr} registered at {} (it took the first beat)",
                hb.url()
            );
        }
        announced
    };
    if !announce(&hb) {
        eprintln!(
            "regcenter: {addr} is not registered yet: {} has not taken it; retrying until it does",
            hb.url()
        );
    }
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
            Err(RecvTimeoutError::Timeout) if hb.is_running() => {
                announce(&hb);
            }
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

#[cfg(feature = "etcd")]
fn register_etcd(list: &str, addr: &str, a: &Args, signals: Signals) -> Result<(), Failure> {
    let endpoints = super::etcd_endpoints(list);
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
    super::etcd_builder("").map(drop)
}
