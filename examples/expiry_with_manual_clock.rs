//! Expiry without sleeping: a [`Registry`] built on a [`ManualClock`], whose
//! time moves only when the program says so.
//!
//! Two servers register, one with the default TTL of 5 s and one asking for
//! 20 s. The clock is moved by hand: a renewal pushes the first server's
//! deadline back, then time passes its TTL and a sweep removes it while the
//! second stays; finally the second expires too. Each step is checked with
//! an assertion, so a change in expiry makes the program fail (exit 101,
//! naming the step); it exits 0 otherwise. No thread, socket or real wait is
//! involved: this is how expiry is tested in-process.
//!
//! Run it with `cargo run --example expiry_with_manual_clock`.

use std::process::ExitCode;
use std::time::Duration;

use regcenter::{ManualClock, PutOptions, Registry};

const SERVICE: &str = "arith";
const SHORT: &str = "tcp@127.0.0.1:7001";
const LONG: &str = "tcp@127.0.0.1:7002";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("expiry_with_manual_clock: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), regcenter::Error> {
    let clock = ManualClock::new();
    // The registry keeps its own clone: advancing ours moves its time.
    let registry = Registry::builder()
        .default_ttl(Duration::from_secs(5))
        .clock(clock.clone())
        .build()?;

    let short = registry.put(SERVICE, SHORT)?;
    let long = registry.put_with(
        SERVICE,
        LONG,
        &PutOptions::new().ttl(Duration::from_secs(20)),
    )?;
    println!(
        "t=0s   registered {SHORT} (ttl {:?}) and {LONG} (ttl {:?})",
        short.ttl, long.ttl
    );
    assert_eq!(short.ttl, Duration::from_secs(5), "the default TTL applies");
    assert_eq!(
        long.ttl,
        Duration::from_secs(20),
        "the asked-for TTL applies"
    );
    assert_eq!(
        registry.alive(SERVICE),
        [SHORT, LONG],
        "both are alive at t=0s"
    );

    // A heartbeat before the deadline renews: the 5 s count again from t=4s.
    clock.advance(Duration::from_secs(4));
    let renewal = registry.put(SERVICE, SHORT)?;
    assert!(!renewal.changed, "a renewal does not change the listing");
    clock.advance(Duration::from_secs(4));
    println!("t=8s   alive: {:?}", registry.alive(SERVICE));
    assert_eq!(
        registry.alive(SERVICE),
        [SHORT, LONG],
        "the renewal at t=4s keeps {SHORT} alive until t=9s"
    );

    // One second more reaches the renewed deadline: the sweep removes it.
    clock.advance(Duration::from_secs(1));
    let swept = registry.sweep();
    println!("t=9s   swept {swept}, alive: {:?}", registry.alive(SERVICE));
    assert_eq!(swept, 1, "exactly {SHORT} expires at t=9s");
    assert_eq!(registry.alive(SERVICE), [LONG], "{LONG} outlives {SHORT}");

    // Every call expires what is due first, so a read alone sees it gone.
    clock.advance(Duration::from_secs(11));
    let left = registry.alive(SERVICE);
    println!("t=20s  alive: {left:?}");
    assert!(
        left.is_empty(),
        "{LONG} expires at t=20s, 20 s after it registered"
    );

    let stats = registry.stats();
    println!("stats: {stats:?}");
    assert_eq!(stats.registrations, 2, "two addresses were registered");
    assert_eq!(stats.renewals, 1, "one renewal was made");
    assert_eq!(stats.expiries, 2, "both entries expired");
    assert_eq!(stats.deregistrations, 0, "nothing was deregistered");
    assert_eq!(stats.entries, 0, "the table is empty");
    println!("done");
    Ok(())
}
