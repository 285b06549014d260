//! Loopback integration tests: one binary, one module per area.

mod common;

mod auth;
mod cli;
mod consul;
mod discovery;
#[cfg(feature = "etcd")]
mod etcd;
mod hardening;
mod heartbeat;
mod hostile;
mod operations;
mod prometheus;
mod server;
mod watch;
