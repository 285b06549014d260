//! regcenter: a service registry and client-side discovery for threaded Rust
//! programs, wire-compatible with the GeeRPC tutorial's Go registry.

mod clock;
mod error;
pub mod protocol;
mod registry;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use registry::{
    EntryInfo, Listing, PutOptions, PutOutcome, Registry, RegistryBuilder, Sweeper,
};
