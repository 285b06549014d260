//! The one error type of the crate.

use std::fmt;
use std::path::PathBuf;

/// Boxed cause of a transport failure: keeps ureq and tiny_http types out of
/// the public API while still exposing the chain through `source()`.
type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in regcenter.
///
/// `Display` says what failed and with which value; the underlying cause, if
/// any, is available through [`std::error::Error::source`] and is not repeated
/// in the message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A server address is empty, longer than 255 bytes, or contains a byte
    /// outside visible ASCII (0x21–0x7E) or a comma.
    InvalidAddr {
        /// The rejected address, with unprintable bytes escaped.
        addr: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A service name is not 1–128 characters of `A-Z a-z 0-9 . _ -`, or is
    /// `.` or `..`.
    InvalidService {
        /// The rejected name, with unprintable bytes escaped.
        service: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A Go-style duration (`500ms`, `5s`, `1m30s`) could not be parsed.
    InvalidDuration {
        /// The rejected text.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A builder or option was given a value it cannot work with, such as a
    /// minimum TTL above the maximum or a bind address that does not parse.
    InvalidConfig {
        /// The setting, e.g. `min_ttl`.
        setting: &'static str,
        /// What is wrong with it and what to do instead.
        reason: String,
    },
    /// The registry holds as many entries as it is allowed to; a new address
    /// is refused until some expire or are deregistered (renewals still work).
    Full {
        /// The configured maximum number of entries.
        limit: usize,
    },
    /// A local operating-system operation failed: binding the listener or
    /// spawning a thread.
    Io {
        /// What was being done, e.g. `bind 127.0.0.1:9999`.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The registry could not be reached or did not answer in time
    /// (connection refused, timeout, connection reset).
    Unreachable {
        /// The URL that was called.
        url: String,
        /// The transport error.
        source: Cause,
    },
    /// The registry answered with an error status.
    Status {
        /// The URL that was called.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's one-line reason, possibly empty.
        reason: String,
    },
    /// The registry's answer could not be understood.
    BadResponse {
        /// The URL that was called.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A snapshot of the table could not be read or is not a whole
    /// snapshot: corrupt, truncated, edited, or of an unknown version.
    /// Nothing of it was loaded. [`Registry::restore`](crate::Registry::restore)
    /// returns it for its text; a [`RegistryServer`](crate::RegistryServer)
    /// started with a snapshot file reports it in its log, sets the file
    /// aside as `FILE.corrupt` and starts empty.
    BadSnapshot {
        /// The file, `None` for text given to `Registry::restore`.
        path: Option<PathBuf>,
        /// The line at fault, counted from 1; `None` when the fault is not
        /// on one line (the file could not be read).
        line: Option<usize>,
        /// What is wrong with it.
        reason: String,
        /// The error that reading the file failed with, if that is what
        /// went wrong.
        source: Option<std::io::Error>,
    },
    /// A discovery was asked for a server while it knows of none.
    NoServers {
        /// Where the list came from (a registry URL or `fixed list`).
        source: String,
    },
    /// The handle was already stopped, or its background thread panicked.
    Stopped {
        /// Which handle, e.g. `heartbeat for tcp@127.0.0.1:7001`.
        what: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed: everything but an
    /// explicit refusal and errors of our own input or machine.
    ///
    /// Transient: the registry was unreachable, stalled or timed out; its
    /// answer could not be read (not HTTP, cut short, an oversized head, a
    /// malformed header, a redirect); it was full; it answered any status
    /// other than a refusal (5xx, 429, 405, a 404 without a reason, …).
    /// Something between us and the registry may be broken for a while, or
    /// the registry itself restarting; none of it says the call is wrong.
    ///
    /// Permanent: 400 (a bad address or option), 401 and 403 (a refused
    /// token), 404 with a reason (no registry at that path: a regcenter
    /// registry names the path it does not know), and
    /// [`InvalidAddr`](Error::InvalidAddr), [`InvalidService`](Error::InvalidService),
    /// [`InvalidConfig`](Error::InvalidConfig), [`Io`](Error::Io),
    /// [`BadSnapshot`](Error::BadSnapshot) (the same text or file fails the
    /// same way again), [`Stopped`](Error::Stopped) and the rest.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Full { .. } | Error::BadResponse { .. } => true,
            Error::Status { status, reason, .. } => {
                !(matches!(status, 400 | 401 | 403) || (*status == 404 && !reason.is_empty()))
            }
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(setting: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            setting,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidAddr { addr, reason } => {
                write!(f, "invalid server address {addr:?}: {reason}")
            }
            Error::InvalidService { service, reason } => {
                write!(f, "invalid service name {service:?}: {reason}")
            }
            Error::InvalidDuration { input, reason } => {
                write!(f, "invalid duration {input:?}: {reason}")
            }
            Error::InvalidConfig { setting, reason } => write!(f, "invalid {setting}: {reason}"),
            Error::Full { limit } => write!(
                f,
                "registry is full ({limit} entries): retry later or raise the entry limit"
            ),
            Error::Io { context, .. } => write!(f, "{context} failed"),
            Error::Unreachable { url, .. } => write!(f, "registry {url}: unreachable"),
            Error::Status {
                url,
                status,
                reason,
            } => {
                if reason.is_empty() {
                    write!(f, "registry {url}: answered {status}")
                } else {
                    write!(f, "registry {url}: answered {status}: {reason}")
                }
            }
            Error::BadResponse { url, reason } => write!(f, "registry {url}: {reason}"),
            Error::BadSnapshot {
                path, line, reason, ..
            } => {
                f.write_str("snapshot")?;
                if let Some(path) = path {
                    write!(f, " {}", path.display())?;
                }
                if let Some(line) = line {
                    write!(f, " line {line}")?;
                }
                write!(f, ": {reason}: restore an intact copy, or start without it")
            }
            Error::NoServers { source } => write!(f, "no available servers from {source}"),
            Error::Stopped { what } => write!(f, "{what} is stopped"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Unreachable { source, .. } => Some(source.as_ref()),
            Error::BadSnapshot {
                source: Some(source),
                ..
            } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_small_send_and_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert!(
            std::mem::size_of::<Error>() <= 80,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn display_is_lowercase_without_period_and_names_the_value() {
        let e = Error::Status {
            url: "http://127.0.0.1:9/myRPC/registry".into(),
            status: 400,
            reason: "missing X-Myrpc-Server header".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry http://127.0.0.1:9/myRPC/registry: answered 400: missing X-Myrpc-Server header"
        );
        assert!(!e.is_transient());
        let e = Error::Status {
            url: "u".into(),
            status: 503,
            reason: String::new(),
        };
        assert!(e.is_transient());
    }

    #[test]
    fn only_explicit_refusals_and_our_own_mistakes_are_permanent() {
        let status = |status, reason: &str| Error::Status {
            url: "u".into(),
            status,
            reason: reason.into(),
        };
        for permanent in [
            status(400, "invalid X-Myrpc-Weight"),
            status(400, ""),
            status(401, ""),
            status(403, "forbidden"),
            status(404, "no registry at /elsewhere"),
            Error::config("timeout", "must be above zero"),
        ] {
            assert!(!permanent.is_transient(), "{permanent}");
        }
        for transient in [
            status(404, ""),
            status(302, ""),
            status(405, "method not allowed"),
            status(408, ""),
            status(418, "teapot"),
            status(429, "slow down"),
            status(500, ""),
            Error::BadResponse {
                url: "u".into(),
                reason: "protocol: http parse fail: invalid header name".into(),
            },
            Error::Full { limit: 1 },
        ] {
            assert!(transient.is_transient(), "{transient}");
        }
    }

    #[test]
    fn a_bad_snapshot_names_its_file_and_line_and_is_permanent() {
        use std::error::Error as _;
        let e = Error::BadSnapshot {
            path: Some("/var/lib/regcenter/table".into()),
            line: Some(7),
            reason: "bad weight".into(),
            source: None,
        };
        assert_eq!(
            e.to_string(),
            "snapshot /var/lib/regcenter/table line 7: bad weight: \
             restore an intact copy, or start without it"
        );
        assert!(!e.is_transient(), "the same file fails the same way again");
        assert!(e.source().is_none());
        let e = Error::BadSnapshot {
            path: Some("t".into()),
            line: None,
            reason: "reading it failed".into(),
            source: Some(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert_eq!(
            e.to_string(),
            "snapshot t: reading it failed: restore an intact copy, or start without it"
        );
        assert!(!e.is_transient());
        let cause = e.source().expect("the read error");
        assert_eq!(cause.to_string(), "permission denied");
    }
}
