//! The binary's commands and their flags.
//!
//! Each command is one file holding its [`Command`]: its flags, each named
//! once with its help text, and the function that runs it. The parser here
//! reads any flag of any command (flags may come before the command's
//! name), decoding its value by its [`Kind`]; then refuses the flags the
//! command does not list. `COMMAND --help` prints the same list.

mod bench;
mod deregister;
mod drain;
mod list;
pub mod logging;
mod register;
mod serve;
mod signals;
mod watch;

use std::ffi::OsString;
use std::time::Duration;

use regcenter::RegistryDiscovery;
use regcenter::loadgen::ListFormat;
use regcenter::protocol::{DEFAULT_REGISTRY_URL, parse_duration};

const USAGE: &str = "\
regcenter: a service registry speaking the GeeRPC registry protocol

usage:
  regcenter [serve] [options]     run the registry until SIGTERM (or INT, HUP, QUIT)
  regcenter list [options]        print the alive servers, one per line
  regcenter watch [options]       print the list each time it changes
  regcenter register --addr ADDR  keep ADDR registered until SIGTERM (or INT, HUP, QUIT)
  regcenter deregister --addr ADDR
  regcenter drain --addr ADDR     keep ADDR registered but stop handing it out
  regcenter undrain --addr ADDR   hand ADDR out again
  regcenter bench [options]       load a registry and report its throughput
  regcenter COMMAND --help        options of a command
  regcenter --version             the version

exit codes: 0 done; 2 a usage or configuration error, or input the registry
refused (400), nothing done; 1 any other failure.

every command takes --token-file FILE: the registry's bearer token (serve:
the token that POST and DELETE must carry); without it REGCENTER_TOKEN is used.

list, watch and register take --etcd URL[,URL...] to use etcd instead of a
registry (builds with the `etcd` feature).

environment: REGCENTER_LOG=error|warn|info|debug|trace (default info)
";

/// Every command, the default (`serve`) first.
const COMMANDS: &[Command] = &[
    serve::COMMAND,
    list::COMMAND,
    watch::COMMAND,
    register::COMMAND,
    deregister::COMMAND,
    drain::DRAIN,
    drain::UNDRAIN,
    bench::COMMAND,
];

/// `--registry URL`, for every command that talks to a registry.
const REGISTRY: Flag = Flag::new(
    "registry",
    Kind::Text,
    "URL",
    "registry URL (default http://127.0.0.1:9999/myRPC/registry)",
);

/// `--service NAME`, defaulting to the default service.
const SERVICE: Flag = Flag::new(
    "service",
    Kind::Text,
    "NAME",
    "service (default: the default service)",
);

/// `--token-file FILE` as a client of a registry reads it.
const TOKEN_FILE: Flag = Flag::new(
    "token-file",
    Kind::Text,
    "FILE",
    "the registry's bearer token (or set REGCENTER_TOKEN)",
);

/// `--etcd URL[,URL...]`: etcd instead of a registry.
const ETCD: Flag = Flag::new(
    "etcd",
    Kind::Text,
    "URL[,URL...]",
    "use etcd at these endpoints instead of a registry\n\
     (builds with the `etcd` feature)",
);

/// `--ca-file FILE`: a private CA for `https://` registries and etcd.
const CA_FILE: Flag = Flag::new(
    "ca-file",
    Kind::Text,
    "FILE",
    "trust only the CA certificates in this PEM file for\n\
     https:// (builds with the `tls` feature)",
);

/// A failure and the exit code it maps to: 2 for usage and configuration
/// errors and input the registry refused (nothing was started or
/// changed), 1 for the rest; and stdout closed by its reader (`regcenter
/// list | head -1`), which ends a command quietly with 0.
pub enum Failure {
    Usage(String),
    Config(Box<dyn std::error::Error>),
    Run(Box<dyn std::error::Error>),
    ClosedPipe,
}

impl From<lexopt::Error> for Failure {
    fn from(e: lexopt::Error) -> Self {
        Failure::Usage(e.to_string())
    }
}

impl From<regcenter::Error> for Failure {
    /// Input errors exit 2, in the CLI's words: the library names a
    /// setting (`max_ttl`), the message names its flag (`--max-ttl`).
    fn from(e: regcenter::Error) -> Self {
        use regcenter::Error as E;
        let words = match &e {
            E::InvalidConfig { setting, reason } => match *setting {
                "registry URL" => format!("--registry: {reason}"),
                "token" => format!("the token (--token-file or REGCENTER_TOKEN): {reason}"),
                s => match find_flag(&s.replace('_', "-")) {
                    Some(f) => format!("--{}: {reason}", f.name),
                    None => e.to_string(),
                },
            },
            E::InvalidService { service, reason } => format!("--service {service:?}: {reason}"),
            E::InvalidAddr { addr, reason } => format!("--addr {addr:?}: {reason}"),
            E::InvalidDuration { .. } => e.to_string(),
            // The registry refused what it was given: the same input
            // fails the same way again.
            E::Status { status: 400, .. } => e.to_string(),
            _ => return Failure::Run(Box::new(e)),
        };
        Failure::Config(words.into())
    }
}

/// Writes `text` to stdout. A reader that has gone (`| head -1`) ends the
/// command quietly ([`Failure::ClosedPipe`]); Rust ignores SIGPIPE, so
/// `print!` would panic instead.
pub(crate) fn out(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::ClosedPipe,
            _ => Failure::Run(format!("writing to stdout failed: {e}").into()),
        })
}

/// The error and its causes joined by ": ", each once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}

/// A command: its name, its flags and what runs it.
struct Command {
    name: &'static str,
    /// What follows `usage: regcenter NAME` in its help.
    synopsis: &'static str,
    flags: &'static [Flag],
    /// Lines printed after the flags in its help.
    notes: &'static str,
    run: fn(Args) -> Result<(), Failure>,
}

/// One flag of a command.
#[derive(Debug, Clone, Copy)]
struct Flag {
    /// Without the leading `--`.
    name: &'static str,
    kind: Kind,
    /// The value's placeholder in the help (`""` for a switch).
    value: &'static str,
    /// One or more lines.
    help: &'static str,
}

impl Flag {
    const fn new(name: &'static str, kind: Kind, value: &'static str, help: &'static str) -> Flag {
        Flag {
            name,
            kind,
            value,
            help,
        }
    }

    const fn switch(name: &'static str, help: &'static str) -> Flag {
        Flag::new(name, Kind::Switch, "", help)
    }
}

/// How a flag's value is read. A name has one kind in every command (a
/// test checks), since values are decoded before the command is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No value.
    Switch,
    Text,
    /// Go-style: 500ms, 5s, 1m30s.
    Duration,
    /// A `usize`.
    Count,
    /// A `u32`.
    Weight,
    /// `key=value`; repeatable.
    Meta,
    Format,
}

/// A decoded value.
enum Value {
    Switch,
    Text(String),
    Duration(Duration),
    Count(usize),
    Weight(u32),
    Meta(String, String),
    Format(ListFormat),
}

impl Kind {
    fn read(self, p: &mut lexopt::Parser, name: &str) -> Result<Value, Failure> {
        use lexopt::ValueExt as _;
        Ok(match self {
            Kind::Switch => Value::Switch,
            Kind::Text => Value::Text(p.value()?.string()?),
            Kind::Duration => {
                let v = p.value()?.string()?;
                Value::Duration(
                    parse_duration(&v).map_err(|e| Failure::Usage(format!("--{name}: {e}")))?,
                )
            }
            Kind::Count => Value::Count(p.value()?.parse()?),
            Kind::Weight => Value::Weight(p.value()?.parse()?),
            Kind::Meta => {
                let kv = p.value()?.string()?;
                let (k, v) = kv.split_once('=').ok_or_else(|| {
                    Failure::Usage(format!("--{name} {kv:?}: write it as key=value"))
                })?;
                Value::Meta(k.to_string(), v.to_string())
            }
            Kind::Format => Value::Format(match p.value()?.string()?.as_str() {
                "text" => ListFormat::Text,
                "seed" => ListFormat::Seed,
                other => {
                    return Err(Failure::Usage(format!(
                        "--{name} {other:?}: use text or seed"
                    )));
                }
            }),
        })
    }
}

/// The flag of any command named `name`.
fn find_flag(name: &str) -> Option<&'static Flag> {
    COMMANDS
        .iter()
        .flat_map(|c| c.flags)
        .find(|f| f.name == name)
}

impl Command {
    fn usage(&self) -> String {
        let mut s = format!("usage: regcenter {} {}\n", self.name, self.synopsis);
        for f in self.flags {
            let left = match f.value {
                "" => format!("--{}", f.name),
                v => format!("--{} {v}", f.name),
            };
            // The help starts in column 23, or on the next line when the
            // flag reaches it.
            if left.len() < 20 {
                s.push_str(&format!("  {left:<20}"));
            } else {
                s.push_str(&format!("  {left}\n{:22}", ""));
            }
            for (i, line) in f.help.lines().enumerate() {
                if i > 0 {
                    s.push_str(&format!("{:22}", ""));
                }
                s.push_str(line);
                s.push('\n');
            }
        }
        s.push_str(self.notes);
        s
    }
}

/// Parses `argv` (without the program's name) and runs its command.
///
/// # Errors
///
/// [`Failure::Usage`] for unknown commands and flags, bad values and flags
/// the command does not take; whatever the command returns.
pub fn run(argv: Vec<OsString>) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let only_help = argv.len() <= 1;
    let mut p = lexopt::Parser::from_args(argv);
    let mut command: Option<String> = None;
    let mut given = Vec::new();
    let mut help = false;
    let mut version = false;
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => help = true,
            Short('V') | Long("version") => version = true,
            Long(name) if find_flag(name).is_some() => {
                let flag = find_flag(name).expect("found above");
                given.push((flag.name, flag.kind.read(&mut p, flag.name)?));
            }
            Value(v) if command.is_none() => command = Some(v.string()?),
            _ => return Err(arg.unexpected().into()),
        }
    }
    if version {
        return out(&format!("regcenter {}\n", env!("CARGO_PKG_VERSION")));
    }
    let name = command.unwrap_or_else(|| "serve".into());
    if name == "help" {
        return out(USAGE);
    }
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        return Err(Failure::Usage(format!("unknown command {name:?}")));
    };
    if help {
        // `regcenter --help` alone is the general help, not serve's.
        return if command.name == "serve" && only_help {
            out(USAGE)
        } else {
            out(&command.usage())
        };
    }
    if let Some((flag, _)) = given
        .iter()
        .find(|(f, _)| !command.flags.iter().any(|c| c.name == *f))
    {
        return Err(Failure::Usage(format!(
            "--{flag} does not apply to {}",
            command.name
        )));
    }
    (command.run)(Args { given })
}

/// The flags given to a command, in order, decoded. Where a flag is given
/// twice the last one counts, but for `--meta`, which adds up.
struct Args {
    given: Vec<(&'static str, Value)>,
}

impl Args {
    fn last(&self, flag: &Flag) -> Option<&Value> {
        self.given
            .iter()
            .rev()
            .find(|(name, _)| *name == flag.name)
            .map(|(_, v)| v)
    }

    fn text(&self, flag: &Flag) -> Option<&str> {
        match self.last(flag) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        }
    }

    fn duration(&self, flag: &Flag) -> Option<Duration> {
        match self.last(flag) {
            Some(Value::Duration(d)) => Some(*d),
            _ => None,
        }
    }

    fn count(&self, flag: &Flag) -> Option<usize> {
        match self.last(flag) {
            Some(Value::Count(n)) => Some(*n),
            _ => None,
        }
    }

    fn weight(&self, flag: &Flag) -> Option<u32> {
        match self.last(flag) {
            Some(Value::Weight(n)) => Some(*n),
            _ => None,
        }
    }

    fn switch(&self, flag: &Flag) -> bool {
        matches!(self.last(flag), Some(Value::Switch))
    }

    /// Whether `flag` was given, whatever its value.
    fn given(&self, flag: &Flag) -> bool {
        self.last(flag).is_some()
    }

    fn format(&self, flag: &Flag) -> Option<ListFormat> {
        match self.last(flag) {
            Some(Value::Format(f)) => Some(*f),
            _ => None,
        }
    }

    /// Every value of a repeatable text flag, in order.
    fn texts<'a>(&'a self, flag: &'a Flag) -> impl Iterator<Item = &'a str> {
        self.given.iter().filter_map(move |(name, v)| match v {
            Value::Text(t) if *name == flag.name => Some(t.as_str()),
            _ => None,
        })
    }

    /// Every `key=value` of a repeatable flag, in order.
    fn pairs<'a>(&'a self, flag: &'a Flag) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.given.iter().filter_map(move |(name, v)| match v {
            Value::Meta(k, v) if *name == flag.name => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    /// A flag the command cannot run without.
    fn required(&self, flag: &Flag, command: &str) -> Result<&str, Failure> {
        self.text(flag).ok_or_else(|| {
            Failure::Usage(format!("{command} needs --{} {}", flag.name, flag.value))
        })
    }

    fn registry(&self) -> &str {
        self.text(&REGISTRY).unwrap_or(DEFAULT_REGISTRY_URL)
    }

    fn service(&self) -> &str {
        self.text(&SERVICE).unwrap_or("")
    }

    /// The bearer token: from `--token-file`, else `REGCENTER_TOKEN`. Never
    /// from a command-line value, which every user of the machine sees. A
    /// file that cannot be read or is blank, and a variable that is set but
    /// blank, are refused alike: either would otherwise switch auth off.
    fn token(&self) -> Result<Option<String>, Failure> {
        let config = |msg: String| Failure::Config(msg.into());
        if let Some(path) = self.text(&TOKEN_FILE) {
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

    /// `--ca-file`, which needs the `tls` feature.
    fn ca_file(&self) -> Result<Option<&str>, Failure> {
        let ca = self.text(&CA_FILE);
        if cfg!(not(feature = "tls")) && ca.is_some() {
            return Err(Failure::Usage(TLS_NEEDED.replace("{flag}", "--ca-file")));
        }
        Ok(ca)
    }

    /// The options of a one-off call: the token and `--ca-file`.
    fn call_options(&self) -> Result<regcenter::CallOptions, Failure> {
        let mut o = regcenter::CallOptions::new();
        if let Some(t) = self.token()? {
            o = o.token(t);
        }
        let ca = self.ca_file()?;
        #[cfg(feature = "tls")]
        if let Some(ca) = ca {
            o = o.ca_file(ca);
        }
        #[cfg(not(feature = "tls"))]
        let _ = ca;
        Ok(o)
    }

    /// A discovery of the registry, or of etcd with `--etcd`.
    fn discovery(&self, watch: bool) -> Result<RegistryDiscovery, Failure> {
        let mut b = match self.text(&ETCD) {
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
        let ca = self.ca_file()?;
        #[cfg(feature = "tls")]
        if let Some(ca) = ca {
            b = b.ca_file(ca);
        }
        #[cfg(not(feature = "tls"))]
        let _ = ca;
        Ok(b.build()?)
    }
}

/// A TLS flag in a build without the `tls` feature (`{flag}` is replaced).
const TLS_NEEDED: &str =
    "{flag} needs a regcenter built with the tls feature (cargo build --features tls)";

#[cfg(feature = "etcd")]
fn etcd_builder(list: &str) -> Result<regcenter::RegistryDiscoveryBuilder, Failure> {
    Ok(RegistryDiscovery::etcd(&etcd_endpoints(list)))
}

#[cfg(not(feature = "etcd"))]
fn etcd_builder(_: &str) -> Result<regcenter::RegistryDiscoveryBuilder, Failure> {
    Err(Failure::Usage(
        "--etcd needs a regcenter built with the etcd feature (cargo build --features etcd)".into(),
    ))
}

/// The endpoints of `--etcd URL[,URL...]`.
#[cfg(feature = "etcd")]
fn etcd_endpoints(list: &str) -> Vec<&str> {
    list.split(',').filter(|e| !e.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_name_has_one_kind_in_every_command() {
        for c in COMMANDS {
            for f in c.flags {
                let first = find_flag(f.name).unwrap();
                assert_eq!(f.kind, first.kind, "--{} of {}", f.name, c.name);
                assert_eq!(
                    f.value.is_empty(),
                    f.kind == Kind::Switch,
                    "--{} of {}",
                    f.name,
                    c.name
                );
            }
            let mut names: Vec<_> = c.flags.iter().map(|f| f.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), c.flags.len(), "{} names a flag twice", c.name);
        }
    }

    #[test]
    fn every_command_help_lists_every_flag_it_takes() {
        for c in COMMANDS {
            let usage = c.usage();
            assert!(usage.starts_with("usage: regcenter "), "{usage}");
            for f in c.flags {
                assert!(
                    usage.contains(&format!("\n  --{}", f.name)),
                    "{} --help misses --{}:\n{usage}",
                    c.name,
                    f.name
                );
            }
            assert!(usage.contains("--token-file"), "{}", c.name);
        }
        for c in ["list", "watch", "register"] {
            let c = COMMANDS.iter().find(|x| x.name == c).unwrap();
            assert!(c.usage().contains("\n  --etcd "), "{}", c.name);
        }
    }

    #[test]
    fn a_long_flag_breaks_the_line_and_continuations_align() {
        let usage = serve::COMMAND.usage();
        assert!(
            usage.contains(
                "  --snapshot-interval D\n                      how often the snapshot is written"
            ),
            "{usage}"
        );
        assert!(
            usage.contains("  --max-connections N most open connections"),
            "{usage}"
        );
    }
}
