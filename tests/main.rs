//! Loopback integration tests: one binary, one module per area.

mod common;

mod discovery;
mod heartbeat;
mod server;
