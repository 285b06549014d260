//! The HTTP client side shared by heartbeats and discovery: one ureq agent
//! per handle, timeouts on every phase, errors mapped to [`Error`].

use std::time::Duration;

use crate::error::{Error, Result};

/// Default bound of each phase of a call (connect, send, answer, body).
pub(crate) const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response head accepted: the seed's listing header for about
/// 45 000 addresses. Our own registry answers lists in the body instead.
const MAX_HEAD: usize = 1 << 20;
/// Largest response body read (a text listing of ~100 000 addresses).
const MAX_BODY: u64 = 16 << 20;

/// An agent with per-phase timeouts. `timeout_global` is avoided on purpose:
/// it makes ureq spawn a resolver thread on every call (CRATE-NOTES §0.8).
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    let t = Some(timeout);
    ureq::Agent::config_builder()
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
    match e {
        ureq::Error::Timeout(_)
        | ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed => Error::Unreachable {
            url,
            source: Box::new(e),
        },
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::TlsRequired => Error::config(
            "registry URL",
            format!("{url}: {e}; use http://host:port/path"),
        ),
        other => Error::BadResponse {
            url,
            reason: other.to_string(),
        },
    }
}
