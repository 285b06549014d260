//! A watching client: a [`RegistryDiscovery`] with
//! [.watch(true)`](regcenter::RegistryDiscoveryBuilder::watch) keeps a
//! long-poll open from its own thread, and
//! [`wait_for_change`](RegistryDiscovery::wait_for_change) wakes the program
//! when the service's listing changes.
//!
//! A registry starts on 127.0.0.1 with a free port; the client watches the
//! service `arith`, then a server registers (a [`Heartbeat`]) and
//! deregisters (the heartbeat stopped), and the client prints the list after
//! each change. Its refresh period is an hour, so every list it prints came
//! through the watch. Each wait has a deadline: the program exits 0 when it
//! saw both changes, 1 naming the one it missed otherwise, and joins every
//! thread it started either way.
//!
//! Run it with `cargo run --example watch`.

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use regcenter::{Discovery, Heartbeat, RegistryDiscovery, RegistryServer};

const SERVICE: &str = "arith";
/// A registered address: nothing needs to listen there, the registry does
/// not call its servers.
const SERVER: &str = "tcp@127.0.0.1:7001";
/// How long each change may take to arrive; on loopback it takes a few
/// milliseconds at most.
const DEADLINE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watch: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let registry = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .start()?;
    println!("registry at {}", registry.url());

    let discovery = RegistryDiscovery::builder(registry.url())
        .service(SERVICE)
        .watch(true)
        // No periodic refresh while the example runs: what it sees, the
        // watch brought.
        .refresh_period(Duration::from_secs(3600))
        .build()?;

    // The watch thread fetches the list at once; its first answer sets the
    // index to watch from.
    let start = discovery.wait_for_change(None, DEADLINE).ok_or_else(|| {
        format!(
            "no first listing from {} within {DEADLINE:?}",
            registry.url()
        )
    })?;
    println!("index {start}: {:?}", discovery.get_all()?);

    let t = Instant::now();
    let heartbeat = Heartbeat::builder(registry.url(), SERVER)
        .service(SERVICE)
        .start()?;
    let registered = next_change(&discovery, start, "the registration")?;
    let list = discovery.get_all()?;
    println!(
        "index {registered}, seen {:?} after the call to start: {list:?}",
        t.elapsed()
    );
    if list != [SERVER] {
        return Err(
            format!("after the registration the list is {list:?}, not [{SERVER:?}]").into(),
        );
    }

    // Stopping the heartbeat deregisters the server at once.
    let t = Instant::now();
    heartbeat.stop()?;
    let deregistered = next_change(&discovery, registered, "the deregistration")?;
    let list = discovery.get_all()?;
    println!(
        "index {deregistered}, seen {:?} after the call to stop: {list:?}",
        t.elapsed()
    );
    if !list.is_empty() {
        return Err(format!("after the deregistration the list is {list:?}, not empty").into());
    }

    // Ends the long-poll at once and joins the watch thread.
    discovery.stop()?;
    registry.shutdown()?;
    println!("done");
    Ok(())
}

/// The index after `seen`, or an error naming the change that did not
/// arrive before the deadline.
fn next_change(
    discovery: &RegistryDiscovery,
    seen: u64,
    change: &str,
) -> Result<u64, Box<dyn Error>> {
    match discovery.wait_for_change(Some(seen), DEADLINE) {
        Some(index) if index != seen => Ok(index),
        _ => Err(format!(
            "{change} did not reach the watching client within {DEADLINE:?} (index still {seen})"
        )
        .into()),
    }
}

/// The error and its causes joined by ": ", as the `regcenter` binary prints.
fn chain(e: &dyn Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}
