//! The registry under attack: each test drives the real server (or a real
//! client) over raw sockets on 127.0.0.1 the way a hostile or broken peer
//! would, and asserts what must still hold.

mod clients;
mod config;
mod conns;
mod framing;
mod memory;
mod persistence;
mod pipelining;
mod signals;
mod watchers;
