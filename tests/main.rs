//! Loopback integration tests: one binary, one module per area.

mod common;

mod auth;
mod cli;
mod discovery;
mod drain;
#[cfg(feature = "etcd")]
mod etcd;
mod filters;
mod hardening;
mod heartbeat;
mod hostile;
mod operations;
mod recovery;
mod server;
mod watch;
