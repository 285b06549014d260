//! From tiny_http's requests to answers: the intake that takes each request
//! off a tiny_http server, the screening that refuses what we will not
//! serve, and the jobs that route and answer on the server's own threads.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::http::{self, Conn, Exchange, Front, Http};
use super::lanes::{Arrival, Lanes, Next};
use super::metrics::Metrics;
use super::pool::Pool;
use super::refusals::{Kind, Refusals};
use super::route::{self, Method, Outcome, Request, Response, RouteConfig};
use super::watch::{Parked, Watchers};
use crate::registry::{Registry, ServiceName};

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
    /// The refusal log, limited to a line a second per kind.
    pub(crate) refusals: Refusals,
    pub(crate) url: String,
    /// Answers being written, by connection, since when: the guard cuts a
    /// connection whose client does not read its answer.
    pub(crate) writing: Mutex<HashMap<SocketAddr, Instant>>,
    pub(crate) intakes: Mutex<Vec<JoinHandle<()>>>,
    /// A rebuilt server whose intake could not be started yet.
    pub(crate) orphan: Mutex<Option<Arc<Http>>>,
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
pub(crate) fn start_intake(ctx: &Arc<Ctx>, http: Arc<Http>) -> io::Result<()> {
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
fn intake(ctx: &Arc<Ctx>, http: &Arc<Http>) {
    let mut quiet_since = Instant::now();
    loop {
        match http::recv(http, INTAKE_TICK) {
            Ok(Some(rq)) => {
                quiet_since = Instant::now();
                ctx.front.record(rq.peer().as_ref());
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

fn admit(ctx: &Arc<Ctx>, rq: Exchange) {
    let peer = rq.peer();
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
    found: Option<Conn>,
    last: Option<(u16, &str)>,
) -> bool {
    ctx.lanes.close(peer, found.map(|c| c.inode));
    if let Some((status, reason)) = last {
        // The connection cap is the one 503 answered by closing.
        ctx.refusals.warn(
            Kind::of_status(status, true),
            format_args!("refused {peer}: {status} {reason}; closing its connection"),
        );
    }
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
                let resp = route::render(&c.registry, &p.service, p.format, &p.filter);
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
fn serve_lane(ctx: &Arc<Ctx>, id: usize, rq: Exchange) {
    let peer = rq.peer();
    if serve_guarded(ctx, id, rq)
        && let Some(peer) = peer
    {
        continue_lane(ctx, id, peer);
    }
}

/// [`serve`], and if anything in it panics, the request counts as answered
/// (tiny_http answers a request dropped in the unwind with an empty 500),
/// so that its connection's lane goes on.
fn serve_guarded(ctx: &Arc<Ctx>, id: usize, rq: Exchange) -> bool {
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
fn serve(ctx: &Arc<Ctx>, id: usize, rq: Exchange) -> bool {
    let started = Instant::now();
    let method = rq.method_name();
    if let Err((status, reason)) = rq.screen() {
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
        if let Some(peer) = rq.peer()
            && !cut(ctx, peer, Some((status, &reason)))
        {
            log::debug!("the connection from {peer} was gone before it could be closed");
        }
        discard(ctx, rq);
        ctx.metrics.record(id, method, status, started.elapsed());
        return true;
    }
    if rq.head_bytes() as u64 > MAX_HEAD_BYTES {
        let reason = "request head larger than 64 KiB";
        ctx.refusals.warn(
            Kind::Head,
            format_args!("refused {method} from {}: 431 {reason}", Peer(rq.peer())),
        );
        let resp = Response::text(431, reason);
        write(ctx, id, rq, resp, method, started);
        return true;
    }
    let req = rq.request();
    let outcome = match operations(ctx, &req) {
        Some(resp) => Outcome::Answer(resp),
        None => route::dispatch(&ctx.registry, &ctx.cfg, &req),
    };
    match outcome {
        Outcome::Answer(resp) => {
            if matches!(resp.status, 401 | 403 | 503) {
                // The route's only 503: the registry is full.
                ctx.refusals.warn(
                    Kind::of_status(resp.status, false),
                    format_args!(
                        "refused {method} {} from {}: {} {}",
                        req.url,
                        Peer(rq.peer()),
                        resp.status,
                        String::from_utf8_lossy(resp.body.as_bytes()).trim_end()
                    ),
                );
            }
            write(ctx, id, rq, resp, method, started);
            true
        }
        Outcome::Park(watch) => park(ctx, id, rq, &watch, started),
    }
}

/// Parks a long-poll unless its connection has sent more behind it, the
/// registry is stopping, or too many are parked.
fn park(ctx: &Arc<Ctx>, id: usize, rq: Exchange, watch: &route::Watch, started: Instant) -> bool {
    let peer = rq.peer();
    if peer.is_some_and(|p| !ctx.lanes.park(p)) {
        let resp = route::render(&ctx.registry, &watch.service, watch.format, &watch.filter);
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
            ctx.refusals.warn(
                Kind::Watchers,
                format_args!(
                    "refused a long-poll on {} from {}: 503 {reason}",
                    ServiceName(&watch.service),
                    Peer(peer)
                ),
            );
            let resp = Response::text(503, reason).with_retry_after(1);
            write(ctx, id, rq, resp, "GET", started);
            true
        }
        None => {
            log::debug!(
                "{} parked a long-poll on {}",
                Peer(peer),
                ServiceName(&watch.service)
            );
            // A change committed between the route's check and the parking
            // was announced before this watcher was there to hear it; and a
            // request may have arrived behind it meanwhile.
            // Its own listing's index: with a filter the service's runs
            // ahead of it, and waking the service's watchers on that would
            // answer every unfiltered one early at each filtered park.
            if route::current_index(&ctx.registry, &watch.service, &watch.filter) > watch.index {
                let woken = match peer {
                    Some(peer) => ctx.watchers.take_peer(peer).into_iter().collect(),
                    None => ctx
                        .watchers
                        .take_services(&[Arc::from(watch.service.as_str())]),
                };
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

/// Lets a request we will not answer go, counting it when it must be
/// leaked.
fn discard(ctx: &Ctx, rq: Exchange) {
    if rq.let_go() {
        ctx.metrics
            .counters
            .leaked_requests
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Answers `rq` on this thread; the guard cuts the connection if its client
/// holds the write too long.
fn write(
    ctx: &Arc<Ctx>,
    id: usize,
    rq: Exchange,
    resp: Response,
    method: &'static str,
    started: Instant,
) {
    let status = resp.status;
    let peer = rq.peer();
    let resp = match &ctx.cfg.shared {
        Some(shared) if shared.degraded() => {
            resp.with_header(crate::protocol::HEADER_DEGRADED, "etcd unreachable")
        }
        _ => resp,
    };
    // The request's target is copied only for the line that shows it.
    let url = log::log_enabled!(log::Level::Debug).then(|| rq.request().url);
    if let Some(peer) = peer {
        ctx.writing.lock().insert(peer, Instant::now());
    }
    let written = rq.respond(resp);
    if let Some(peer) = peer {
        ctx.writing.lock().remove(&peer);
        // Part of an answer may have gone out: the next one would be read
        // as the rest of it, so the connection ends here.
        if let Err(e) = written {
            log::debug!("answering {peer} failed: {e}; closing its connection");
            cut(ctx, peer, None);
        }
    }
    let took = started.elapsed();
    if let Some(url) = url {
        log::debug!(
            "{} {method} {url} {status} {:.1}ms",
            Peer(peer),
            took.as_secs_f64() * 1000.0
        );
    }
    ctx.metrics.record(id, method, status, took);
}

/// A client's address in a log line, `-` when tiny_http had none.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => f.write_str("-"),
        }
    }
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
        let mut body = ctx
            .metrics
            .render(&ctx.registry, ctx.watchers.len(), ctx.front.rebuilds());
        if let Some(shared) = &ctx.cfg.shared {
            super::metrics::render_etcd(&mut body, shared.degraded(), shared.applied());
        }
        Response::with_body(200, "text/plain; version=0.0.4; charset=utf-8", body)
    } else {
        let body = super::status::status_page(&ctx.registry, &ctx.url);
        Response::with_body(200, "text/html; charset=utf-8", body)
    })
}
