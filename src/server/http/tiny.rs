//! The request path's door to tiny_http: a request as tiny_http hands it
//! over ([`Exchange`]), what we read of it, how it is answered, and how one
//! we will not answer is let go. The rest of the server sees only these
//! methods; tiny_http's defects on this path are handled here:
//!
//! | tiny_http 0.12 | here | test |
//! |---|---|---|
//! | frames by the first `Content-Length`, takes `+5` as a length, a number beyond `usize` as none, ignores `Content-Length` beside `Transfer-Encoding`, takes any header name | [`Exchange::screen`] refuses them (the caller closes the connection) | `tests/hostile/framing.rs` |
//! | reads no body ahead for `Expect: 100-continue`, and dropping such a request waits for the body | [`Exchange::screen`] refuses any body we would wait for | `bodies_are_refused_without_waiting_for_them` |
//! | dropping a request with a huge declared body allocates that length and may abort the process | [`Exchange::let_go`] leaks it instead | `tests/hardening.rs` `unread_request_bodies_neither_abort_the_process_nor_block_a_worker` |
//! | switches large answers to chunked | [`Exchange::respond`] keeps `Content-Length` | `tests/server.rs` |

use std::io::{self, Read};
use std::net::SocketAddr;

use crate::server::route::{Body, Method, Request, Response};

/// Bodies up to this size are read by tiny_http before the request is
/// queued (CRATE-NOTES §1.3), so dropping their requests cannot block.
const PREREAD_BODY: usize = 1024;
/// Largest declared body whose unread rest tiny_http may be left to drain:
/// its drain allocates the whole declared length at once, and an absurd
/// length aborts the process (CRATE-NOTES §1.8e).
const SAFE_DRAIN: usize = 1 << 20;

/// One request, from the moment tiny_http hands it over until it is
/// answered or let go.
pub(crate) struct Exchange(tiny_http::Request);

impl Exchange {
    pub(crate) fn new(rq: tiny_http::Request) -> Exchange {
        Exchange(rq)
    }

    /// The client's address: with the listener's, it names the connection.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        self.0.remote_addr().copied()
    }

    /// The method, as the metrics name it.
    pub(crate) fn method_name(&self) -> &'static str {
        match self.0.method() {
            tiny_http::Method::Get => "GET",
            tiny_http::Method::Head => "HEAD",
            tiny_http::Method::Post => "POST",
            tiny_http::Method::Delete => "DELETE",
            _ => "OTHER",
        }
    }

    /// Bytes of the request head, about as sent.
    pub(crate) fn head_bytes(&self) -> usize {
        self.0
            .headers()
            .iter()
            .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
            .sum::<usize>()
            + self.0.url().len()
    }

    /// What the routes need of it.
    pub(crate) fn request(&self) -> Request {
        Request {
            method: match self.0.method() {
                tiny_http::Method::Get => Method::Get,
                tiny_http::Method::Head => Method::Head,
                tiny_http::Method::Post => Method::Post,
                tiny_http::Method::Delete => Method::Delete,
                other => Method::Other(other.to_string()),
            },
            url: self.0.url().to_string(),
            headers: self
                .0
                .headers()
                .iter()
                .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
                .collect(),
        }
    }

    /// Why a request is refused before routing: framing that two HTTP parsers
    /// could read differently (request smuggling), bytes no header may hold,
    /// or a body we would have to read. Such a connection is closed, since
    /// where its next request starts is not known.
    pub(crate) fn screen(&self) -> Result<(), (u16, String)> {
        let rq = &self.0;
        let mut lengths = 0;
        let mut chunked = false;
        let mut expect = false;
        for h in rq.headers() {
            let name = h.field.as_str().as_str();
            let value = h.value.as_str();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err((
                    400,
                    "a header name is not a token (letters, digits and !#$%&'*+-.^_`|~ only)"
                        .into(),
                ));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err((
                    400,
                    format!(
                        "header {} holds a control character: header values take only visible ASCII, spaces and tabs",
                        clip(name)
                    ),
                ));
            }
            if name.eq_ignore_ascii_case("Content-Length") {
                // Plain digits that fit a usize: tiny_http reads a longer
                // number as no length at all, and the body as the next request.
                if value.is_empty()
                    || !value.bytes().all(|b| b.is_ascii_digit())
                    || value.parse::<usize>().is_err()
                {
                    return Err((400, "Content-Length is not a plain number of bytes".into()));
                }
                lengths += 1;
            } else if name.eq_ignore_ascii_case("Transfer-Encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("Expect") {
                expect = true;
            }
        }
        if lengths > 1 {
            return Err((400, "more than one Content-Length".into()));
        }
        if lengths == 1 && chunked {
            return Err((400, "both Content-Length and Transfer-Encoding".into()));
        }
        let declared = rq.body_length().unwrap_or(0);
        // tiny_http reads a body of up to 1 KiB before queueing the request,
        // except when the client waits for `100 Continue`: then nothing is
        // read, and dropping the request would wait for the body.
        if chunked || declared > PREREAD_BODY || (expect && declared > 0) {
            return Err((
                413,
                "regcenter reads no request bodies; send registrations as headers".into(),
            ));
        }
        Ok(())
    }

    /// Answers it. A client that went away is not an error (tiny_http
    /// counts a reset or broken pipe as answered); any other error may
    /// have left part of the answer on the connection.
    pub(crate) fn respond(self, resp: Response) -> io::Result<()> {
        self.0.respond(to_tiny(resp))
    }

    /// Lets it go unanswered: tiny_http then writes an empty 500 (on a
    /// connection shut down, that fails at once) after draining its unread
    /// body. True when it had to be leaked instead (a declared body over
    /// 1 MiB, whose drain would allocate that much and may abort the
    /// process): its tiny_http thread and two descriptors stay behind.
    pub(crate) fn let_go(self) -> bool {
        let declared = self.0.body_length().unwrap_or(0);
        if declared > SAFE_DRAIN {
            log::warn!(
                "leaked a request declaring a {declared}-byte body to keep the process alive"
            );
            std::mem::forget(self);
            return true;
        }
        if cfg!(target_os = "linux") {
            // Its connection was shut down by the caller, so draining the
            // rest of a body reads the end of the stream at once.
            drop(self);
        } else {
            // Elsewhere nothing could shut the connection down, and the
            // drain may wait for a client that never sends the body.
            let _ = std::thread::Builder::new()
                .name("regcenter-drain".into())
                .spawn(move || drop(self));
        }
        false
    }
}

/// At most 64 bytes of a name, for an error message.
fn clip(s: &str) -> &str {
    &s[..s.len().min(64)]
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn to_tiny(resp: Response) -> tiny_http::Response<BodyReader> {
    let headers = resp
        .headers
        .iter()
        .filter_map(|(n, v)| tiny_http::Header::from_bytes(n.as_bytes(), v.as_bytes()).ok())
        .collect();
    let len = resp.body.as_bytes().len();
    tiny_http::Response::new(
        tiny_http::StatusCode(resp.status),
        headers,
        BodyReader {
            body: resp.body,
            pos: 0,
        },
        Some(len),
        None,
    )
    // Keep Content-Length on large listings instead of switching to chunked.
    .with_chunked_threshold(usize::MAX)
}

/// Streams a body without copying a shared listing.
struct BodyReader {
    body: Body,
    pos: usize,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.body.as_bytes()[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}
