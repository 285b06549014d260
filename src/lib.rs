//! regcenter: a service registry and client-side discovery for threaded Rust
//! programs, wire-compatible with the GeeRPC tutorial's Go registry.

mod client;
mod clock;
mod discovery;
mod error;
mod heartbeat;
pub mod protocol;
mod rand;
mod registry;
mod server;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use registry::{
    EntryInfo, Listing, PutOptions, PutOutcome, Registry, RegistryBuilder, Sweeper,
};
pub use server::{RegistryServer, RegistryServerBuilder};
pub use discovery::{
    Discovery, MultiServersDiscovery, RegistryDiscovery, RegistryDiscoveryBuilder, SelectMode,
};
pub use heartbeat::{Heartbeat, HeartbeatOptions};
