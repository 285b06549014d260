//! The thread that follows etcd into the mirror: one watch over the whole
//! layout, resumed from the last revision applied when it breaks, and a
//! fresh range when its history was compacted away.

use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::Inner;
use super::keys::enc;
use crate::etcd::int;

/// How long a watch may stay silent before it is opened again. etcd sends
/// nothing on a quiet watch unless its progress notifications are on
/// (`--experimental-watch-progress-notify-interval`, 10 min by default),
/// so a member that stopped answering (paused, or cut off by a network
/// that drops packets) would go unnoticed; reopening a quiet watch costs
/// one request and no revision.
const QUIET: Duration = Duration::from_secs(5);

/// Why a watch ended.
enum End {
    /// Its history was compacted: read the table again.
    Compacted,
    /// Closed or cancelled: open it again.
    Again,
    /// Quiet for too long, or broken: open it again on the next endpoint,
    /// since this one's member may be the trouble (frozen, or cut off by
    /// the network).
    Moved,
}

pub(super) fn run(s: &Inner) {
    let mut relist = false;
    let mut backoff = Duration::from_millis(50);
    let mut failing = false;
    while !s.stopping.load(Ordering::SeqCst) {
        let lost = s.data_lost.swap(false, Ordering::SeqCst);
        let used = s.watch_endpoint.load(Ordering::SeqCst);
        let attempt = if relist || lost {
            s.relist(lost).map(|_| End::Again)
        } else {
            watch(s, used)
        };
        match attempt {
            Ok(End::Compacted) => {
                log::info!("etcd compacted the history being watched: reading the table again");
                relist = true;
                continue;
            }
            Ok(End::Moved) => {
                advance(s, used);
                continue;
            }
            Ok(End::Again) => {
                relist = false;
                if failing {
                    log::info!("following etcd again");
                    failing = false;
                }
                backoff = Duration::from_millis(50);
                continue;
            }
            Err(e) => {
                if s.stopping.load(Ordering::SeqCst) {
                    return;
                }
                if lost {
                    s.data_lost.store(true, Ordering::SeqCst);
                }
                if !failing {
                    log::warn!("following etcd failed: {e}; retrying on the next endpoint");
                    failing = true;
                }
                advance(s, used);
            }
        }
        // Slept on the keeper's condition, so a stop ends it at once.
        let mut stop = s.keeper_lock.lock();
        if !*stop {
            s.keeper_wake.wait_for(&mut stop, backoff);
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Moves the watch off endpoint `used`, unless the keeper moved it
/// meanwhile, to one that answers.
fn advance(s: &Inner, used: usize) {
    let _ = s.watch_endpoint.compare_exchange(
        used,
        used.wrapping_add(1),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
}

/// One watch from the revision after the last applied, on endpoint
/// `endpoint` (modulo their number), read until it ends.
fn watch(s: &Inner, endpoint: usize) -> crate::error::Result<End> {
    let endpoints = s.etcd.endpoints();
    let base = &endpoints[endpoint % endpoints.len()];
    let url = format!("{base}/v3/watch");
    let from = s.state.lock().applied + 1;
    let (key, end) = s.layout.range();
    let body = json!({ "create_request": {
        "key": enc(&key), "range_end": enc(&end),
        "start_revision": from.to_string(), "progress_notify": true,
    }});
    // An agent of its own, so that a stop can shut this watch down
    // without failing anything else.
    let agent = crate::client::agent_trusting(Duration::from_secs(2), &s.trust);
    *s.watch_agent.lock() = Some(agent.clone());
    if s.stopping.load(Ordering::SeqCst) {
        return Ok(End::Again);
    }
    let unreachable =
        |e: Box<dyn std::error::Error + Send + Sync>| crate::error::Error::Unreachable {
            url: url.clone(),
            source: e,
        };
    let resp = agent
        .post(&url)
        .config()
        .timeout_recv_body(None)
        .timeout_per_read(Some(QUIET))
        .build()
        .header("Content-Type", "application/json")
        // Without it a member that lost its quorum keeps the watch open
        // and silent (etcd#10819); with it, etcd cancels the watch.
        .header("Grpc-Metadata-hasleader", "true")
        .send(body.to_string())
        .map_err(|e| unreachable(Box::new(e)))?;
    let reader = std::io::BufReader::new(resp.into_body().into_reader());
    for line in reader.lines() {
        let Ok(line) = line else {
            // Quiet too long, or the connection broke: resume elsewhere.
            return Ok(End::Moved);
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["error"].is_object() {
            return Err(unreachable(
                format!("the watch ended with {}", v["error"]["message"]).into(),
            ));
        }
        let r = &v["result"];
        if int(&r["compact_revision"]).is_some_and(|c| c > 0) {
            return Ok(End::Compacted);
        }
        if r["canceled"].as_bool() == Some(true) {
            return Err(unreachable(
                format!(
                    "etcd cancelled the watch: {}",
                    r["cancel_reason"].as_str().unwrap_or("no reason given")
                )
                .into(),
            ));
        }
        match r["events"].as_array() {
            Some(events) if !events.is_empty() => s.apply(events, None),
            // A progress notification: everything up to its revision has
            // been sent. The `created` answer's revision says nothing of
            // the history still to come, so it is not one.
            _ if r["created"].as_bool() != Some(true) => {
                s.apply(&[], int(&r["header"]["revision"]));
            }
            // Its revision is the member's, which may lag behind what
            // another member brought: no sign of a data loss.
            _ => {}
        }
        if s.stopping.load(Ordering::SeqCst) {
            return Ok(End::Again);
        }
    }
    Ok(End::Again)
}
