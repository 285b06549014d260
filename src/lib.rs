//! regcenter is a service registry and client-side discovery library for
//! Rust programs that use plain threads, plus a `regcenter` binary that runs
//! the registry. It speaks the wire protocol of the GeeRPC tutorial's Go
//! registry, so Go servers and clients of that tutorial work against it
//! unchanged.
//!
//! Servers announce themselves with a [`Heartbeat`]; an entry that is not
//! renewed within its TTL expires. Clients ask the registry which servers
//! are alive through a [`Discovery`] and pick one.
//!
//! ```
//! use regcenter::{Discovery, Heartbeat, RegistryDiscovery, RegistryServer, SelectMode};
//!
//! // A registry on 127.0.0.1 with a free port and a short TTL.
//! let server = RegistryServer::start_local()?;
//!
//! // A server announces itself; the first beat lands before start returns.
//! let heartbeat = Heartbeat::builder(server.url(), "tcp@127.0.0.1:7001")
//!     .service("arith")
//!     .start()?;
//!
//! // A client discovers it.
//! let discovery = RegistryDiscovery::builder(server.url()).service("arith").build()?;
//! assert_eq!(discovery.get(SelectMode::RoundRobin)?, "tcp@127.0.0.1:7001");
//!
//! // Stopping the heartbeat deregisters the server at once.
//! heartbeat.stop()?;
//! discovery.refresh()?;
//! assert!(discovery.get_all()?.is_empty());
//! server.shutdown()?;
//! # Ok::<(), regcenter::Error>(())
//! ```
//!
//! # Threads and shutdown
//!
//! Every background thread belongs to a handle: [`RegistryServer`] (an
//! intake per HTTP server that takes requests in order, its pool of
//! request threads, which grows while slow clients hold them, its
//! connection guard, its watch timer, the [`Sweeper`] that expires
//! entries, the snapshot writer when it keeps a snapshot, and with TLS an
//! acceptor and a relay thread per connection), [`Heartbeat`] (one thread
//! per registry), a [`RegistryDiscovery`] in watch mode, [`Sweeper`], and
//! `EtcdRegistration` (feature `etcd`, one lease thread).
//! `shutdown()`/`stop()` ends and joins them, and so does dropping the
//! handle; a server's stop answers parked long-polls, then shuts every
//! connection down, so no client can hold it up. Every HTTP call a client
//! makes has per-phase timeouts (2 s by default), so no call hangs.
//!
//! # Untrusted input
//!
//! A registration's address must be one a client can dial:
//! `proto@host:port` for `tcp`, `tcp4`, `tcp6`, `udp` and `http`
//! (`tcp@127.0.0.1:7001`, `tcp@[::1]:7001`), `proto@rest` for other
//! protocols (`unix@/run/app.sock`), 1–255 bytes of visible ASCII without a
//! comma ([`protocol::validate_dialable_addr`]); a registry built with
//! `free_form_addresses` (`serve --free-form-addresses`) takes any
//! address of visible ASCII without a comma ([`protocol::validate_addr`]). Service names are 1–128
//! characters of `A-Z a-z 0-9 . _ -`, `X-Myrpc-*` header values at most
//! 1 KiB; anything else is answered 400 with a one-line reason and changes
//! nothing. The registry holds at most 100 000 entries by default (503 with
//! `Retry-After` beyond). It reads no request bodies. The binary binds
//! 127.0.0.1 and refuses other addresses without a token unless `--insecure`
//! is given.
//!
//! # Logging
//!
//! Through the `log` facade: registrations, deregistrations and expiries at
//! info, heartbeat and discovery outages at warn (once per outage), each
//! request at debug. Refusals (a full registry, a missing or wrong token,
//! a body or head too large, the connection or long-poll cap, bad framing,
//! a slow client) are logged at warn under `regcenter::refused::KIND`
//! (`full`, `token`, `body`, `head`, `connections`, `watchers`, `framing`,
//! `slow`), at most once a second per kind and server: the others are
//! counted, and one line per kind says how many when its next second
//! starts and when the server stops, so that a flood of bad requests
//! cannot fill a disk. The library installs no logger.
//!
//! # Features
//!
//! - `cli` (default): the `regcenter` binary and `regcenter::loadgen`, the load
//!   generator behind `regcenter bench`. With `default-features = false`
//!   the library builds without them and without the binary's
//!   dependencies (env_logger, lexopt, signal-hook).
//! - `etcd`: the same client API over etcd (`RegistryDiscovery::etcd`,
//!   `EtcdRegistration`).
//! - `tls`: HTTPS. The server with `RegistryServerBuilder::tls` (a PEM
//!   certificate chain and key), every client with `https://` URLs and
//!   `ca_file` for a private CA (`HeartbeatBuilder`,
//!   `RegistryDiscoveryBuilder`, `EtcdRegistrationBuilder`,
//!   [`CallOptions`]), through rustls. Without it an `https://` URL is
//!   refused with an error that names the feature.
//!
//! # Differences from the Go seed
//!
//! - GET answers carry `X-Myrpc-Index`, and `?format=text` answers the list
//!   in the body (one address per line) instead of the header.
//! - Invalid input is answered 400 with a reason (the seed answered 500).
//! - DELETE deregisters; the seed answered 405.
//! - A heartbeat's default period is a third of the registry's TTL (the
//!   seed's "timeout minus one minute" is negative for its 5 s default).
//! - A discovery keeps serving its last list when the registry is down.
//! - Registrations must be dialable (`proto@host:port`), unless the
//!   registry is free-form; the seed took any string.
//! - Long-poll watch (`?index=N&wait=D`), weights, metadata, per-entry TTLs
//!   and JSON listings; weighted and consistent-hash selection.
//! - Draining (`X-Myrpc-Status: draining`: registered, but out of the
//!   seed's header and text listings), `?meta.KEY=VALUE` filters, and
//!   `X-Myrpc-Recovering` from a registry that restarted without its
//!   table.
//! - Prometheus HTTP discovery (`/prometheus/targets`) and a read-only
//!   Consul API (`/v1/…`) over the same table.
//! - Discoveries give typed [`Instance`]s (weight, metadata, status, time
//!   left), filter by metadata, prefer a zone, skip instances that callers
//!   report failing ([`RegistryDiscovery::report_failure`]) and never pick
//!   a draining one. Across a registry restart that lost its table they
//!   keep the last list beside the new one while the registry recovers.

#![warn(missing_docs)]

mod client;
mod clock;
mod discovery;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod heartbeat;
// The engine of `regcenter bench` and the HTTP benchmarks, not of the
// registry: built with the binary (README, "Features").
#[cfg(feature = "cli")]
pub mod loadgen;
pub mod protocol;
mod rand;
mod registry;
mod server;

pub use client::CallOptions;
pub use clock::{Clock, ManualClock, SystemClock};
pub use discovery::{
    Discovery, Instance, MultiServersDiscovery, RegistryDiscovery, RegistryDiscoveryBuilder,
    SelectMode, hash_key,
};
pub use error::{Error, Result};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdRegistration, EtcdRegistrationBuilder};
pub use heartbeat::{
    Heartbeat, HeartbeatBuilder, HeartbeatState, deregister, deregister_with, set_status,
};
pub use protocol::Status;
pub use registry::{
    EntryInfo, Listing, PutOptions, PutOutcome, Registry, RegistryBuilder, RegistryStats, Sweeper,
    TTL_LIMIT,
};
pub use server::{RegistryServer, RegistryServerBuilder};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
