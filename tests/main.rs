//! Loopback integration tests: one binary, one module per area.

mod common;

mod addresses;
mod auth;
mod cli;
mod consul;
mod delta;
mod discovery;
mod drain;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
mod etcd_cluster;
mod filters;
#[cfg(feature = "etcd")]
mod frontends;
#[cfg(feature = "etcd")]
mod frontends_attack;
mod hardening;
mod heartbeat;
mod hostile;
mod instances;
mod json_standin;
mod logs;
mod metrics;
mod operations;
mod prometheus;
mod recovery;
mod server;
mod server_drain;
mod server_recovery;
mod status;
#[cfg(feature = "tls")]
mod tls;
mod udp;
mod watch;
