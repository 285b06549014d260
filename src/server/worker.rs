//! The request threads: take a request from the current tiny_http server,
//! route it, answer it.

use std::io::{self, Read};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::conns::{self, Scanner};
use super::front::Front;
use super::guard::MAX_HEAD_BYTES;
use super::metrics::{self, Metrics};
use super::route::{self, Body, Method, Outcome, Request, Response, RouteConfig};
use super::watch::Watchers;
use crate::registry::Registry;

/// Bodies up to this size are read by tiny_http before the request is
/// queued (CRATE-NOTES §1.3), so dropping their requests cannot block.
const PREREAD_BODY: usize = 1024;
/// Largest declared body whose unread rest tiny_http may be left to drain:
/// its drain allocates the whole declared length at once, and an absurd
/// length aborts the process (CRATE-NOTES §1.8e).
const SAFE_DRAIN: usize = 1 << 20;

/// What every request thread shares.
pub(crate) struct Ctx {
    pub(crate) front: Arc<Front>,
    pub(crate) registry: Registry,
    pub(crate) cfg: RouteConfig,
    pub(crate) watchers: Arc<Watchers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) url: String,
}

pub(crate) fn serve(id: usize, ctx: &Ctx) {
    loop {
        let http = ctx.front.current();
        match http.recv() {
            Ok(rq) => {
                let started = Instant::now();
                ctx.front.record(id, rq.remote_addr());
                let method = match rq.method() {
                    tiny_http::Method::Get => "GET",
                    tiny_http::Method::Head => "HEAD",
                    tiny_http::Method::Post => "POST",
                    tiny_http::Method::Delete => "DELETE",
                    _ => "OTHER",
                };
                if let Some(status) = answer(rq, ctx) {
                    ctx.metrics.record(id, method, status, started.elapsed());
                }
            }
            // An unblock: our stop, or a rebuild moving us to a new server.
            Err(e) if e.raw_os_error().is_none() => {
                if ctx.front.stopping() {
                    return;
                }
            }
            Err(e) => ctx.front.rebuild(&http, &format!("accept failed: {e}")),
        }
    }
}

/// Answers (or parks) one request; the status answered, if answered now.
fn answer(rq: tiny_http::Request, ctx: &Ctx) -> Option<u16> {
    let has_unread_body = rq.body_length().is_some_and(|n| n > PREREAD_BODY)
        || rq
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"));
    if has_unread_body {
        ctx.metrics
            .counters
            .refused_bodies
            .fetch_add(1, Ordering::Relaxed);
        reject_body(rq, &ctx.front);
        return Some(413);
    }
    let head_bytes: usize = rq
        .headers()
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum::<usize>()
        + rq.url().len();
    let resp = if head_bytes as u64 > MAX_HEAD_BYTES {
        Response::text(431, "request head larger than 64 KiB")
    } else {
        let req = Request {
            method: match rq.method() {
                tiny_http::Method::Get => Method::Get,
                tiny_http::Method::Head => Method::Head,
                tiny_http::Method::Post => Method::Post,
                tiny_http::Method::Delete => Method::Delete,
                other => Method::Other(other.to_string()),
            },
            url: rq.url().to_string(),
            headers: rq
                .headers()
                .iter()
                .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
                .collect(),
        };
        match operations(ctx, &req) {
            Some(resp) => resp,
            None => match route::dispatch(&ctx.registry, &ctx.cfg, &req) {
                Outcome::Answer(resp) => {
                    log::debug!("{:?} {} -> {}", req.method, req.url, resp.status);
                    resp
                }
                Outcome::Park(watch) => {
                    log::debug!("{:?} {} parked", req.method, req.url);
                    ctx.watchers.park(rq, watch);
                    return None;
                }
            },
        }
    };
    let status = resp.status;
    if let Err(e) = rq.respond(to_tiny(resp)) {
        log::debug!("answering a request failed: {e}");
    }
    Some(status)
}

/// `GET /metrics` and `GET /`: the operator's pages, which need the whole
/// server's state, not only the registry's.
fn operations(ctx: &Ctx, req: &Request) -> Option<Response> {
    let path = req.url.split_once('?').map_or(req.url.as_str(), |(p, _)| p);
    if path != "/metrics" && path != "/" {
        return None;
    }
    if !matches!(req.method, Method::Get | Method::Head) {
        return Some(route::method_not_allowed("GET"));
    }
    if let Err(r) = ctx.cfg.authorize(req, false) {
        return Some(r);
    }
    Some(if path == "/metrics" {
        let body = ctx
            .metrics
            .render(&ctx.registry, ctx.watchers.len(), ctx.front.rebuilds());
        Response::with_body(200, "text/plain; version=0.0.4; charset=utf-8", body)
    } else {
        let body = metrics::status_page(&ctx.registry, &ctx.url);
        Response::with_body(200, "text/html; charset=utf-8", body)
    })
}

/// Answers 413 to a request whose body was not read, without letting
/// tiny_http drain it: the answer is written to the socket directly and the
/// connection shut down, so the drain ends at once.
fn reject_body(rq: tiny_http::Request, front: &Front) {
    let declared = rq.body_length().unwrap_or(0);
    let body = "regcenter reads no request bodies; send registrations as headers\n";
    let answer = format!(
        "HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let closed = rq.remote_addr().copied().is_some_and(|peer| {
        Scanner::new(front.local)
            .scan(true)
            .into_iter()
            .find(|c| c.peer == peer)
            .is_some_and(|c| conns::send_and_close(&c, front.local, answer.as_bytes()))
    });
    log::debug!("refused a request body of {declared} bytes");
    if declared > SAFE_DRAIN {
        // Dropping would allocate `declared` bytes and may abort the
        // process. Leak it instead: its tiny_http thread and two
        // descriptors stay behind, the client's connection is closed.
        log::warn!("leaked a request declaring a {declared}-byte body to keep the process alive");
        std::mem::forget(rq);
    } else if closed {
        drop(rq); // the socket is shut down: the drain reads EOF at once
    } else {
        // Not found (not Linux, or already gone): drop it off the worker,
        // since the drain may wait for the client.
        let _ = std::thread::Builder::new()
            .name("regcenter-drain".into())
            .spawn(move || drop(rq));
    }
}

pub(crate) fn to_tiny(resp: Response) -> tiny_http::Response<BodyReader> {
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
pub(crate) struct BodyReader {
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
