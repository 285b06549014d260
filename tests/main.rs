//! Loopback integration tests: one binary, one module per area.

mod common;

mod auth;
mod cli;
mod discovery;
#[cfg(feature = "etcd")]
mod etcd;
mod hardening;
mod heartbeat;
mod hostile;
mod instances;
mod json_standin;
mod operations;
mod recovery;
mod server;
mod watch;
