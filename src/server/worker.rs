//! From tiny_http's requests to answers: the intake that takes each request
//! off a tiny_http server, the screening that refuses what we will not
//! serve, and the jobs that route and answer on the server's own threads.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::front::Front;
use super::lanes::{Arrival, Lanes, Next};
use super::metrics::{self, Metrics};
use super::pool::Pool;
use super::route::{self, Body, Method, Outcome, Request, Response, RouteConfig};
use super::watch::{Parked, Watchers};
use crate::registry::Registry;

/// Bodies up to this size are read by tiny_http before the request is
/// queued (CRATE-NOTES §1.3), so dropping their requests cannot block.
const PREREAD_BODY: usize = 1024;
/// Largest declared body whose unread rest tiny_http may be left to drain:
/// its drain allocates the whole declared length at once, and an absurd
/// length aborts the process (CRATE-NOTES §1.8e).
const SAFE_DRAIN: usize = 1 << 20;
/// Most bytes a request head may take (tiny_http has no limit).
pub(crate) const MAX_HEAD_BYTES: u64 = 64 * 1024;
/// How long after a connection was closed requests from its address are
/// taken for what tiny_http had read of it before the close (on its way
/// through tiny_http's queue), even once its socket is gone.
const RESIDUE_GRACE: Duration = Duration::from_secs(1);
/// How often an intake looks up from a quiet server (to notice a stop, or
/// that the server it drains after a rebuild has gone quiet).
const INTAKE_TICK: Duration = Duration::from_secs(1);

/// What the server's threads share.
pub(crate) struct Ctx {
    pub(crate) front: Arc<Front>,
    pub(crate) registry: Registry,
    pub(crate) cfg: RouteConfig,
    pub(crate) watchers: Watchers,
    pub(crate) lanes: Lanes,
    pub(crate) pool: Arc<Pool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) url: String,
    /// Answers being written, by connection, since when: the guard cuts a
    /// connection whose client does not read its answer.
    pub(crate) writing: Mutex<HashMap<SocketAddr, Instant>>,
    pub(crate) intakes: Mutex<Vec<JoinHandle<()>>>,
    /// A rebuilt server whose intake could not be started yet.
    pub(crate) orphan: Mutex<Option<Arc<tiny_http::Server>>>,
    /// How long a replaced server is read after its last request.
    pub(crate) drain_quiet: Duration,
    /// The name of intake threads.
    pub(crate) name: String,
}

impl Ctx {
    /// Joins every intake thread (after the front was told to stop).
    pub(crate) fn join_intakes(&self) -> bool {
        let mut panicked = false;
        loop {
            let handles = std::mem::take(&mut *self.intakes.lock());
            if handles.is_empty() {
                return panicked;
            }
            for h in handles {
                panicked |= h.join().is_err();
            }
        }
    }
}

/// Starts the intake of `http`, the current tiny_http server.
pub(crate) fn start_intake(ctx: &Arc<Ctx>, http: Arc<tiny_http::Server>) -> io::Result<()> {
    let c = ctx.clone();
    let handle = std::thread::Builder::new()
        .name(ctx.name.clone())
        .spawn(move || intake(&c, &http))?;
    let mut intakes = ctx.intakes.lock();
    intakes.retain(|h| !h.is_finished());
    intakes.push(handle);
    Ok(())
}

/// Takes each request off `http` in the order tiny_http queued it and
/// gives it to its connection's lane; one thread per tiny_http server, so
/// that order is kept.
fn intake(ctx: &Arc<Ctx>, http: &Arc<tiny_http::Server>) {
    let mut quiet_since = Instant::now();
    loop {
        match http.recv_timeout(INTAKE_TICK) {
            Ok(Some(rq)) => {
                quiet_since = Instant::now();
                ctx.front.record(rq.remote_addr());
                admit(ctx, rq);
            }
            // A timeout, or an unblock (ours, on stop: indistinguishable).
            Ok(None) => {
                if ctx.front.stopping()
                    || (quiet_since.elapsed() >= ctx.drain_quiet && !ctx.front.is_current(http))
                {
                    return;
                }
            }
            Err(e) if e.raw_os_error().is_none() => {
                if ctx.front.stopping() {
                    return;
                }
            }
            // The accept thread died; this server's connections still send
            // here, so the loop goes on reading it while the guard rebuilds.
            Err(e) => ctx.front.want_rebuild(http, &format!("accept failed: {e}")),
        }
    }
}

/// Makes a wanted rebuild's next attempt, and starts the intake of the
/// new server; an intake that could not be started is retried on the next
/// call. Called by the guard.
pub(crate) fn rebuild(ctx: &Arc<Ctx>) {
    if ctx.front.rebuild_due()
        && let Some(new) = ctx.front.try_rebuild()
    {
        *ctx.orphan.lock() = Some(new);
    }
    let orphan = ctx.orphan.lock().take();
    if let Some(http) = orphan
        && !ctx.front.stopping()
        && let Err(e) = start_intake(ctx, http.clone())
    {
        log::error!("starting the intake of the rebuilt HTTP server failed: {e}; retrying");
        *ctx.orphan.lock() = Some(http);
    }
}

fn admit(ctx: &Arc<Ctx>, rq: tiny_http::Request) {
    let peer = rq.remote_addr().copied();
    match ctx.lanes.arrive(rq) {
        Arrival::Run(rq) => {
            let c = ctx.clone();
            ctx.pool.submit(Box::new(move |id| serve_lane(&c, id, rq)));
        }
        Arrival::Queued { release_parked } => {
            if release_parked && let Some(peer) = peer {
                release(ctx, peer);
            }
        }
        // Off the intake: finding the connection reads /proc, and
        // dropping a request may wait on its connection.
        Arrival::Verify => {
            if let Some(peer) = peer {
                let c = ctx.clone();
                ctx.pool.submit(Box::new(move |id| verify(&c, id, peer)));
            }
        }
        Arrival::Overflow => {
            if let Some(peer) = peer {
                log::debug!(
                    "{peer} pipelined more than {} requests without reading; closing",
                    super::lanes::MAX_PIPELINED
                );
                ctx.metrics
                    .counters
                    .closed_pipelining
                    .fetch_add(1, Ordering::Relaxed);
                let c = ctx.clone();
                ctx.pool.submit(Box::new(move |_| {
                    cut(&c, peer, None);
                }));
            }
        }
    }
}

/// Requests came from the address of a connection that was closed: drops
/// them while they may be that connection's (tiny_http had read them before
/// the close: its socket is still open, or was a moment ago), serves them
/// once they can only come from a new connection from the same address.
fn verify(ctx: &Arc<Ctx>, id: usize, peer: SocketAddr) {
    let same = match ctx.lanes.closed(peer) {
        None => false,
        Some((at, inode)) => {
            at.elapsed() < RESIDUE_GRACE
                || inode.is_none_or(|i| ctx.front.sockets_of(peer).contains(&i))
        }
    };
    match ctx.lanes.verified(peer, same) {
        Next::Run(rq) => {
            if serve_guarded(ctx, id, rq) {
                continue_lane(ctx, id, peer);
            }
        }
        Next::Idle => {}
        Next::Discard(rest) => rest.into_iter().for_each(|rq| discard(ctx, rq)),
    }
}

/// Shuts `peer`'s connection down: its lane drops whatever else it sends,
/// and a long-poll parked on it is answered (on a shut socket, which frees
/// it). `last` is a last answer (status and reason), written only while no
/// answer of ours is being written on it, so that it cannot land inside
/// one. False when the connection was gone.
pub(crate) fn cut(ctx: &Arc<Ctx>, peer: SocketAddr, last: Option<(u16, &str)>) -> bool {
    cut_conn(ctx, peer, ctx.front.find(peer), last)
}

/// [`cut`], for a connection already found (`None`: it is gone).
pub(crate) fn cut_conn(
    ctx: &Arc<Ctx>,
    peer: SocketAddr,
    found: Option<super::conns::Conn>,
    last: Option<(u16, &str)>,
) -> bool {
    ctx.lanes.close(peer, found.map(|c| c.inode));
    let closed = found.is_some_and(|c| {
        // Held across the check and the shutdown: an answer starting to be
        // written meanwhile finds the socket shut and fails.
        let writing = ctx.writing.lock();
        let bytes = match last {
            Some((status, reason)) if !writing.contains_key(&peer) => last_answer(status, reason),
            _ => String::new(),
        };
        ctx.front.close_listed(&c, bytes.as_bytes())
    });
    release(ctx, peer);
    closed
}

/// A complete answer that closes its connection.
pub(crate) fn last_answer(status: u16, reason: &str) -> String {
    let text = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Answers the watcher parked on `peer`'s connection now, if there is one.
pub(crate) fn release(ctx: &Arc<Ctx>, peer: SocketAddr) {
    if let Some(p) = ctx.watchers.take_peer(peer) {
        answer_parked(ctx, vec![p]);
    }
}

/// Hands parked watchers to the pool, one job each, so one that does not
/// read cannot delay the others.
pub(crate) fn answer_parked(ctx: &Arc<Ctx>, parked: Vec<Parked>) {
    for p in parked {
        let c = ctx.clone();
        ctx.pool.submit(Box::new(move |id| {
            let peer = p.peer;
            let answered = catch_unwind(AssertUnwindSafe(|| {
                let resp = route::render(&c.registry, &p.service, p.format);
                write(&c, id, p.rq, resp, "GET", Instant::now());
            }));
            if answered.is_err() {
                log::error!("answering a parked long-poll panicked; its connection goes on");
            }
            if let Some(peer) = peer {
                continue_lane(&c, id, peer);
            }
        }));
    }
}

/// Serves `rq`, then whatever its connection sent behind it, in order.
fn serve_lane(ctx: &Arc<Ctx>, id: usize, rq: tiny_http::Request) {
    let peer = rq.remote_addr().copied();
    if serve_guarded(ctx, id, rq)
        && let Some(peer) = peer
    {
        continue_lane(ctx, id, peer);
    }
}

/// [`serve`], and if anything in it panics, the request counts as answered
/// (tiny_http answers a request dropped in the unwind with an empty 500),
/// so that its connection's lane goes on.
fn serve_guarded(ctx: &Arc<Ctx>, id: usize, rq: tiny_http::Request) -> bool {
    catch_unwind(AssertUnwindSafe(|| serve(ctx, id, rq))).unwrap_or_else(|_| {
        log::error!("answering a request panicked; its connection goes on");
        true
    })
}

fn continue_lane(ctx: &Arc<Ctx>, id: usize, peer: SocketAddr) {
    loop {
        match ctx.lanes.done(peer) {
            Next::Run(rq) => {
                if !serve_guarded(ctx, id, rq) {
                    return; // parked: its answer goes on with the lane
                }
            }
            Next::Idle => return,
            Next::Discard(rest) => {
                for rq in rest {
                    discard(ctx, rq);
                }
                return;
            }
        }
    }
}

/// Answers one request, or parks it; false when parked.
fn serve(ctx: &Arc<Ctx>, id: usize, rq: tiny_http::Request) -> bool {
    let started = Instant::now();
    let method = match rq.method() {
        tiny_http::Method::Get => "GET",
        tiny_http::Method::Head => "HEAD",
        tiny_http::Method::Post => "POST",
        tiny_http::Method::Delete => "DELETE",
        _ => "OTHER",
    };
    if let Err((status, reason)) = screen(&rq) {
        log::debug!("refused a request from {:?}: {reason}", rq.remote_addr());
        if status == 413 {
            ctx.metrics
                .counters
                .refused_bodies
                .fetch_add(1, Ordering::Relaxed);
        } else {
            ctx.metrics
                .counters
                .refused_framing
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(peer) = rq.remote_addr().copied()
            && !cut(ctx, peer, Some((status, &reason)))
        {
            log::debug!("the connection from {peer} was gone before it could be closed");
        }
        discard(ctx, rq);
        ctx.metrics.record(id, method, status, started.elapsed());
        return true;
    }
    let head_bytes: usize = rq
        .headers()
        .iter()
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len() + 4)
        .sum::<usize>()
        + rq.url().len();
    if head_bytes as u64 > MAX_HEAD_BYTES {
        let resp = Response::text(431, "request head larger than 64 KiB");
        write(ctx, id, rq, resp, method, started);
        return true;
    }
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
    let outcome = match operations(ctx, &req) {
        Some(resp) => Outcome::Answer(resp),
        None => route::dispatch(&ctx.registry, &ctx.cfg, &req),
    };
    match outcome {
        Outcome::Answer(resp) => {
            log::debug!("{:?} {} -> {}", req.method, req.url, resp.status);
            write(ctx, id, rq, resp, method, started);
            true
        }
        Outcome::Park(watch) => park(ctx, id, rq, &watch, started),
    }
}

/// Parks a long-poll unless its connection has sent more behind it, the
/// registry is stopping, or too many are parked.
fn park(
    ctx: &Arc<Ctx>,
    id: usize,
    rq: tiny_http::Request,
    watch: &route::Watch,
    started: Instant,
) -> bool {
    let peer = rq.remote_addr().copied();
    if peer.is_some_and(|p| !ctx.lanes.park(p)) {
        let resp = route::render(&ctx.registry, &watch.service, watch.format);
        write(ctx, id, rq, resp, "GET", started);
        return true;
    }
    match ctx.watchers.park(rq, watch) {
        Some(rq) => {
            ctx.metrics
                .counters
                .refused_watchers
                .fetch_add(1, Ordering::Relaxed);
            let reason = if ctx.front.stopping() {
                "the registry is shutting down; retry against it or another".to_string()
            } else {
                format!(
                    "too many parked long-polls (at most {}); retry later",
                    ctx.watchers.max()
                )
            };
            let resp = Response::text(503, reason).with_retry_after(1);
            write(ctx, id, rq, resp, "GET", started);
            true
        }
        None => {
            log::debug!("GET for {:?} parked", watch.service);
            // A change committed between the route's check and the parking
            // was announced before this watcher was there to hear it; and a
            // request may have arrived behind it meanwhile.
            if ctx.registry.index(&watch.service) > watch.index {
                let woken = ctx
                    .watchers
                    .take_services(&[Arc::from(watch.service.as_str())]);
                answer_parked(ctx, woken);
            }
            if let Some(peer) = peer
                && ctx.lanes.has_waiting(peer)
            {
                release(ctx, peer);
            }
            false
        }
    }
}

/// Why a request is refused before routing: framing that two HTTP parsers
/// could read differently (request smuggling), bytes no header may hold,
/// or a body we would have to read. Such a connection is closed, since
/// where its next request starts is not known.
fn screen(rq: &tiny_http::Request) -> Result<(), (u16, String)> {
    let mut lengths = 0;
    let mut chunked = false;
    let mut expect = false;
    for h in rq.headers() {
        let name = h.field.as_str().as_str();
        let value = h.value.as_str();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err((
                400,
                "a header name is not a token (letters, digits and !#$%&'*+-.^_`|~ only)".into(),
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

/// At most 64 bytes of a name, for an error message.
fn clip(s: &str) -> &str {
    &s[..s.len().min(64)]
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Drops a request we will not answer. tiny_http answers a dropped request
/// with an empty 500 (on a connection shut down, that fails at once) and
/// drains its unread body first.
fn discard(ctx: &Ctx, rq: tiny_http::Request) {
    let declared = rq.body_length().unwrap_or(0);
    if declared > SAFE_DRAIN {
        // The drain would allocate `declared` bytes and may abort the
        // process. Leak it instead: its tiny_http thread and two
        // descriptors stay behind; the client's connection is closed.
        log::warn!("leaked a request declaring a {declared}-byte body to keep the process alive");
        ctx.metrics
            .counters
            .leaked_requests
            .fetch_add(1, Ordering::Relaxed);
        std::mem::forget(rq);
    } else if cfg!(target_os = "linux") {
        // Its connection was shut down (`close`), so draining the rest of
        // a body reads the end of the stream at once.
        drop(rq);
    } else {
        // Elsewhere nothing could shut the connection down, and the drain
        // may wait for a client that never sends the body.
        let _ = std::thread::Builder::new()
            .name("regcenter-drain".into())
            .spawn(move || drop(rq));
    }
}

/// Answers `rq` on this thread; the guard cuts the connection if its client
/// holds the write too long.
fn write(
    ctx: &Arc<Ctx>,
    id: usize,
    rq: tiny_http::Request,
    resp: Response,
    method: &'static str,
    started: Instant,
) {
    let status = resp.status;
    let peer = rq.remote_addr().copied();
    if let Some(peer) = peer {
        ctx.writing.lock().insert(peer, Instant::now());
    }
    let written = rq.respond(to_tiny(resp));
    if let Some(peer) = peer {
        ctx.writing.lock().remove(&peer);
        // Part of an answer may have gone out: the next one would be read
        // as the rest of it, so the connection ends here.
        if let Err(e) = written {
            log::debug!("answering {peer} failed: {e}; closing its connection");
            cut(ctx, peer, None);
        }
    }
    ctx.metrics.record(id, method, status, started.elapsed());
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
