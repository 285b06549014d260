//! Loopback integration tests: one binary, one module per area.

mod common;

mod auth;
mod cli;
mod discovery;
mod hardening;
mod heartbeat;
mod operations;
mod server;
mod watch;
