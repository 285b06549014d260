//! Client-side discovery: the `Discovery` trait, `SelectMode`, and one file
//! per implementation.

mod multi;
mod registry;

pub use multi::MultiServersDiscovery;
pub use registry::{RegistryDiscovery, RegistryDiscoveryBuilder};

use crate::error::{Error, Result};
use crate::rand;

/// How [`Discovery::get`] picks one of the known servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SelectMode {
    /// Uniformly at random.
    Random,
    /// In turn, starting at a random position (as the seed does), and
    /// continuing where it was across list updates.
    RoundRobin,
}

/// A source of server addresses that picks one per call.
///
/// Implementations are shared between threads (`&self` everywhere).
pub trait Discovery: Send + Sync {
    /// Fetches the list from its source now, whatever its age.
    ///
    /// # Errors
    ///
    /// The source's error; the current list is kept.
    fn refresh(&self) -> Result<()>;

    /// Replaces the list by hand.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddr`] when an address is invalid; nothing changes.
    fn update(&self, servers: Vec<String>) -> Result<()>;

    /// Picks one server.
    ///
    /// # Errors
    ///
    /// [`Error::NoServers`] when the list is empty, or the source's error
    /// when no list could ever be fetched.
    fn get(&self, mode: SelectMode) -> Result<String>;

    /// Every known server.
    ///
    /// # Errors
    ///
    /// The source's error when no list could ever be fetched.
    fn get_all(&self) -> Result<Vec<String>>;
}

/// A list with a round-robin position: the state both discoveries share.
#[derive(Debug)]
struct Picker {
    servers: Vec<String>,
    index: usize,
}

impl Picker {
    fn new(servers: Vec<String>) -> Picker {
        // The seed starts round robin at a random index so that many clients
        // started together do not all hit the first server.
        Picker {
            servers,
            index: rand::below(usize::MAX >> 1),
        }
    }

    fn pick(&mut self, mode: SelectMode, source: &str) -> Result<String> {
        let n = self.servers.len();
        if n == 0 {
            return Err(Error::NoServers {
                source: source.to_string(),
            });
        }
        let i = match mode {
            SelectMode::Random => rand::below(n),
            SelectMode::RoundRobin => {
                let i = self.index % n;
                self.index = (i + 1) % n;
                i
            }
        };
        Ok(self.servers[i].clone())
    }
}

fn validate_all(servers: &[String]) -> Result<()> {
    servers
        .iter()
        .try_for_each(|s| crate::protocol::validate_addr(s))
}
