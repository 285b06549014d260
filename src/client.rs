//! The HTTP client side shared by heartbeats and discovery: one ureq agent
//! per handle, timeouts on every phase, the certificate authorities trusted
//! for `https://` (feature `tls`), errors mapped to [`Error`].

use std::time::Duration;

use crate::error::{Error, Result};

/// Default bound of each phase of a call (connect, send, answer, body).
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response head accepted: the seed's listing header for about
/// 45 000 addresses. Our own registry answers lists in the body instead.
const MAX_HEAD: usize = 1 << 20;
/// Largest response body read (a text listing of ~100 000 addresses).
const MAX_BODY: u64 = 16 << 20;

/// What the feature that brings `https://` is called, for errors.
#[cfg(not(feature = "tls"))]
const TLS_FEATURE_HINT: &str =
    "https needs a regcenter built with its `tls` feature (cargo build --features tls)";

/// The certificate authorities a client trusts for `https://`: Mozilla's
/// public roots, or only those of a PEM file (a private CA). Read once, when
/// a handle is built, and shared by its agents.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    #[cfg(feature = "tls")]
    roots: Option<std::sync::Arc<Vec<ureq::tls::Certificate<'static>>>>,
}

impl Trust {
    /// The certificates of the PEM file `ca_file` (`None`: the public
    /// roots).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] (setting `ca_file`) when the file cannot be
    /// read, is not PEM or holds no certificate.
    #[cfg(feature = "tls")]
    pub(crate) fn from_ca_file(ca_file: Option<&std::path::Path>) -> Result<Trust> {
        let Some(path) = ca_file else {
            return Ok(Trust::default());
        };
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| Error::config("ca_file", format!("{shown}: reading it failed: {e}")))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => {
                    return Err(Error::config(
                        "ca_file",
                        format!("{shown}: not a PEM certificate file: {e}"),
                    ));
                }
            }
        }
        if certs.is_empty() {
            return Err(Error::config(
                "ca_file",
                format!("{shown}: holds no certificate (expected -----BEGIN CERTIFICATE-----)"),
            ));
        }
        Ok(Trust {
            roots: Some(std::sync::Arc::new(certs)),
        })
    }
}

/// Options of a one-off call to a registry ([`deregister_with`],
/// [`set_status`]): its bearer token and, with the `tls` feature, the
/// certificate authority trusted for `https://`.
///
/// [`deregister_with`]: crate::deregister_with
/// [`set_status`]: crate::set_status
///
/// ```
/// let options = regcenter::CallOptions::new().token("s3cret");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CallOptions {
    pub(crate) token: Option<String>,
    #[cfg(feature = "tls")]
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

impl CallOptions {
    /// No token, the public roots.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// The registry's bearer token (sent as `Authorization: Bearer …`).
    /// Defaults to none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts only the certificate authorities in this PEM file for an
    /// `https://` registry (a private CA), instead of the public roots.
    /// Read when the call is made. Defaults to the public roots.
    #[cfg(feature = "tls")]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The agent these options ask for, after checking them and `url`.
    pub(crate) fn agent(&self, url: &str) -> Result<ureq::Agent> {
        check_scheme("registry URL", url)?;
        if let Some(t) = &self.token {
            validate_token(t)?;
        }
        #[cfg(feature = "tls")]
        let trust = Trust::from_ca_file(self.ca_file.as_deref())?;
        #[cfg(not(feature = "tls"))]
        let trust = Trust::default();
        Ok(agent_trusting(DEFAULT_CALL_TIMEOUT, &trust))
    }
}

/// Refuses an `https://` URL in a build without TLS, naming the feature,
/// before anything is sent.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (setting `setting`) for such a URL.
pub(crate) fn check_scheme(setting: &'static str, url: &str) -> Result<()> {
    #[cfg(not(feature = "tls"))]
    if url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(Error::config(setting, format!("{url}: {TLS_FEATURE_HINT}")));
    }
    let _ = (setting, url);
    Ok(())
}

/// An agent with per-phase timeouts, trusting `trust` for `https://`.
/// `timeout_global` is avoided on purpose: it makes ureq spawn a resolver
/// thread on every call (CRATE-NOTES §0.8). This is the one place agents
/// are configured, for the registry's clients and etcd's alike.
pub(crate) fn agent_trusting(timeout: Duration, trust: &Trust) -> ureq::Agent {
    let t = Some(timeout);
    let config = ureq::Agent::config_builder();
    #[cfg(feature = "tls")]
    let config = match &trust.roots {
        Some(roots) => config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(roots.clone()))
                .build(),
        ),
        None => config,
    };
    #[cfg(not(feature = "tls"))]
    let _ = trust;
    config
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        // 4xx reasons are read and reported, not turned into bare codes.
        .http_status_as_error(false)
        // A registry is never reached through HTTP_PROXY by accident.
        .proxy(None)
        // A registry does not redirect. A redirect comes back as its 3xx
        // status (retried, not followed): a loop would otherwise cost ten
        // calls per attempt, and a Location ureq cannot parse would surface
        // as a bad URL, which reads as our own mistake.
        .max_redirects(0)
        .max_response_header_size(MAX_HEAD)
        .input_buffer_size(MAX_HEAD + (64 << 10))
        .build()
        .into()
}

/// The `Authorization` header for a bearer token, if any.
pub(crate) fn bearer(token: Option<&str>) -> Option<(&'static str, String)> {
    token.map(|t| ("Authorization", format!("Bearer {t}")))
}

/// Checks a token before it is sent in a header.
pub(crate) fn validate_token(token: &str) -> Result<()> {
    if !crate::protocol::is_valid_token(token) {
        return Err(Error::config(
            "token",
            "must be non-empty visible ASCII (no spaces or line breaks)",
        ));
    }
    Ok(())
}

/// An answer, read to the end so the connection goes back to the pool.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Ok(self)` for 2xx, else [`Error::Status`] with the first line of the
    /// body as the reason.
    pub(crate) fn ok(self, url: &str) -> Result<Reply> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        Err(Error::Status {
            url: url.to_string(),
            status: self.status,
            reason: self.body.lines().next().unwrap_or("").trim().to_string(),
        })
    }
}

pub(crate) enum Verb {
    Get,
    Post,
    Delete,
}

/// Makes one call with the given headers and no request body.
pub(crate) fn call(
    agent: &ureq::Agent,
    verb: Verb,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let result = match verb {
        Verb::Get => headers
            .iter()
            .fold(agent.get(url), |r, (n, v)| r.header(*n, *v))
            .call(),
        Verb::Delete => headers
            .iter()
            .fold(agent.delete(url), |r, (n, v)| r.header(*n, *v))
            .call(),
        Verb::Post => headers
            .iter()
            .fold(agent.post(url), |r, (n, v)| r.header(*n, *v))
            .send_empty(),
    };
    let mut resp = result.map_err(|e| map_error(url, e))?;
    read_reply(url, &mut resp)
}

/// A GET that may wait up to `wait` for its answer (a long-poll): the
/// agent's other timeouts still bound connecting and sending.
pub(crate) fn long_poll(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    wait: Duration,
) -> Result<Reply> {
    let result = headers
        .iter()
        .fold(agent.get(url), |r, (n, v)| r.header(*n, *v))
        .config()
        .timeout_recv_response(Some(wait))
        .build()
        .call();
    let mut resp = result.map_err(|e| map_error(url, e))?;
    read_reply(url, &mut resp)
}

fn read_reply(url: &str, resp: &mut ureq::http::Response<ureq::Body>) -> Result<Reply> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| map_error(url, e))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn map_error(url: &str, e: ureq::Error) -> Error {
    let url = url.to_string();
    #[cfg(feature = "tls")]
    if is_tls_failure(&e) {
        return Error::Unreachable {
            url,
            source: Box::new(TlsFailed(e)),
        };
    }
    match e {
        ureq::Error::Timeout(_)
        | ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed => Error::Unreachable {
            url,
            source: Box::new(e),
        },
        #[cfg(not(feature = "tls"))]
        ureq::Error::TlsRequired => {
            Error::config("registry URL", format!("{url}: {TLS_FEATURE_HINT}"))
        }
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => Error::config(
            "registry URL",
            format!("{url}: {e}; use http://host:port/path"),
        ),
        other => Error::BadResponse {
            url,
            reason: other.to_string(),
        },
    }
}

/// Whether a call failed in the TLS handshake (a certificate not trusted,
/// not for this host, expired; no common protocol).
#[cfg(feature = "tls")]
fn is_tls_failure(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => io.get_ref().is_some_and(|i| i.is::<rustls::Error>()),
        _ => false,
    }
}

/// A TLS handshake that failed, with what to do about the usual cause.
#[derive(Debug)]
#[cfg(feature = "tls")]
struct TlsFailed(ureq::Error);

#[cfg(feature = "tls")]
impl std::fmt::Display for TlsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the TLS handshake failed (a registry with a certificate from a private CA needs \
             that CA's certificate: --ca-file, or ca_file on the builder)",
        )
    }
}

#[cfg(feature = "tls")]
impl std::error::Error for TlsFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[cfg(all(test, not(feature = "tls")))]
mod tests {
    use super::*;

    #[test]
    fn an_https_url_without_the_tls_feature_names_the_feature() {
        // Refused before anything is sent (nothing listens on port 9).
        let url = "https://127.0.0.1:9/myRPC/registry";
        let names_feature = |e: Error| {
            matches!(e, Error::InvalidConfig { .. })
                && e.to_string().contains("`tls` feature")
                && e.to_string().contains(url)
        };
        assert!(names_feature(
            crate::Heartbeat::builder(url, "tcp@127.0.0.1:7001")
                .start()
                .unwrap_err()
        ));
        assert!(names_feature(
            crate::RegistryDiscovery::builder(url).build().unwrap_err()
        ));
        assert!(names_feature(
            crate::deregister(url, "", "tcp@127.0.0.1:7001", None).unwrap_err()
        ));
        assert!(names_feature(
            crate::discovery::list_json_with(url, "", &crate::CallOptions::new()).unwrap_err()
        ));
        // The scheme is case-insensitive.
        let upper = check_scheme("registry URL", "HTTPS://127.0.0.1:9/x").unwrap_err();
        assert!(upper.to_string().contains("`tls` feature"), "{upper}");
        // What ureq answers when a URL gets past the checks says it too.
        assert!(names_feature(map_error(url, ureq::Error::TlsRequired)));
    }
}
