//! Addresses as a slot holds them: an IPv4 `tcp@` address packed in 6
//! bytes, other short ones inline, longer ones as a place in per-size text
//! arenas; and the key a lookup carries.

use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher;

use super::super::RandomState;
use super::{SHORT, sparse};

/// An address in 12 bytes. Every address has exactly one form (it is
/// `Tcp4` only when it prints back to the same text, `Short` only when it
/// is not `Tcp4` and fits), so equal addresses have equal forms.
#[derive(Clone, Copy, Debug)]
pub(super) enum Packed {
    Tcp4 {
        ip: [u8; 4],
        port: u16,
    },
    Short {
        len: u8,
        buf: [u8; SHORT],
    },
    /// The text is in [`Texts`], at `at` among the places of `class`; the
    /// length and 32 more bits of the table hash tell most unequal
    /// addresses apart here.
    Long {
        len: u8,
        class: u8,
        digest: u32,
        at: u32,
    },
}

impl PartialEq for Packed {
    fn eq(&self, other: &Packed) -> bool {
        match (self, other) {
            (Packed::Tcp4 { ip: a, port: p }, Packed::Tcp4 { ip: b, port: q }) => a == b && p == q,
            (Packed::Short { len: a, buf: x }, Packed::Short { len: b, buf: y }) => {
                a == b && x == y
            }
            // Where a text is stored is not part of the address.
            (
                Packed::Long {
                    len: a, digest: x, ..
                },
                Packed::Long {
                    len: b, digest: y, ..
                },
            ) => a == b && x == y,
            _ => false,
        }
    }
}

impl Eq for Packed {}

impl Packed {
    /// With the digest of a `Long` address taken from its table hash (the
    /// high bits; hashbrown uses the top 7 and the low ones).
    pub(super) fn with_digest(mut self, hash: u64) -> Packed {
        if let Packed::Long { digest, .. } = &mut self {
            *digest = (hash >> 24) as u32;
        }
        self
    }
}

/// The texts of long addresses, one arena per place size (16 to 256 bytes:
/// addresses have at most 255): a slot points straight at its text, one
/// cache miss, and a freed place is reused by the next text of its size.
#[derive(Default)]
pub(super) struct Texts {
    pub(super) arenas: [Arena; PLACES.len()],
}

#[derive(Default)]
pub(super) struct Arena {
    pub(super) bytes: Vec<u8>,
    pub(super) free: Vec<u32>,
}

pub(super) const PLACES: [usize; 5] = [16, 32, 64, 128, 256];

impl Texts {
    /// Stores `text`; returns its class and place.
    pub(super) fn put(&mut self, text: &str) -> (u8, u32) {
        let class = PLACES
            .iter()
            .position(|&p| text.len() <= p)
            .expect("addresses are validated to 255 bytes at most");
        let size = PLACES[class];
        let arena = &mut self.arenas[class];
        let at = match arena.free.pop() {
            Some(at) => at,
            None => {
                arena.bytes.resize(arena.bytes.len() + size, 0);
                u32::try_from(arena.bytes.len() / size - 1).expect("fewer than 2^32 entries")
            }
        };
        let start = at as usize * size;
        arena.bytes[start..start + text.len()].copy_from_slice(text.as_bytes());
        (class as u8, at)
    }

    /// The text of a `Long` address, `None` for the others.
    pub(super) fn of(&self, packed: &Packed) -> Option<&str> {
        let Packed::Long { len, class, at, .. } = *packed else {
            return None;
        };
        let start = at as usize * PLACES[usize::from(class)];
        let bytes = &self.arenas[usize::from(class)].bytes[start..start + usize::from(len)];
        Some(std::str::from_utf8(bytes).expect("stored from a str"))
    }

    /// Frees the place of a `Long` address; returns whether its arena is
    /// now mostly free.
    pub(super) fn free(&mut self, packed: &Packed) -> bool {
        let Packed::Long { class, at, .. } = *packed else {
            return false;
        };
        let class = usize::from(class);
        let arena = &mut self.arenas[class];
        arena.free.push(at);
        let places = arena.bytes.len() / PLACES[class];
        sparse(places, places - arena.free.len())
    }
}

/// A server address as the table keys it; a long address borrows its
/// text for a lookup, so a heartbeat allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::registry) struct Key<'a> {
    pub(super) packed: Packed,
    /// The text of a `Long` address.
    pub(super) long: Option<Cow<'a, str>>,
}

impl<'a> Key<'a> {
    /// The key of `addr` after checking it as
    /// [`validate_addr`](crate::protocol::validate_addr) does, or, when
    /// `dialable`, as [`validate_dialable_addr`](crate::protocol::validate_dialable_addr)
    /// does; a packed IPv4 address is valid by its shape (but for port 0),
    /// so a heartbeat scans it once.
    pub(in crate::registry) fn checked(addr: &'a str, dialable: bool) -> crate::Result<Key<'a>> {
        if let Some(packed) = parse_tcp4(addr)
            && !(dialable && matches!(packed, Packed::Tcp4 { port: 0, .. }))
        {
            return Ok(Key { packed, long: None });
        }
        if dialable {
            crate::protocol::validate_dialable_addr(addr)?;
        } else {
            crate::protocol::validate_addr(addr)?;
        }
        Ok(Key::new(addr))
    }

    pub(in crate::registry) fn new(addr: &'a str) -> Key<'a> {
        if let Some(packed) = parse_tcp4(addr) {
            return Key { packed, long: None };
        }
        let bytes = addr.as_bytes();
        if bytes.len() <= SHORT {
            let mut buf = [0; SHORT];
            buf[..bytes.len()].copy_from_slice(bytes);
            let len = bytes.len() as u8;
            return Key {
                packed: Packed::Short { len, buf },
                long: None,
            };
        }
        Key {
            packed: Packed::Long {
                len: bytes.len() as u8,
                class: 0,
                digest: 0,
                at: 0,
            },
            long: Some(Cow::Borrowed(addr)),
        }
    }

    /// The same key owning its text: a copy of 12 bytes, and an
    /// allocation only for a long address.
    pub(in crate::registry) fn owned(&self) -> Key<'static> {
        Key {
            packed: self.packed,
            long: self.long.as_deref().map(|l| Cow::Owned(l.to_string())),
        }
    }

    /// The table hash: seeded, and over the whole text of a long address,
    /// so crafted addresses cannot pile up in one probe sequence.
    pub(super) fn hash(&self, hasher: &RandomState) -> u64 {
        hash_of(&self.packed, self.long.as_deref(), hasher)
    }
}

pub(super) fn hash_of(packed: &Packed, long: Option<&str>, hasher: &RandomState) -> u64 {
    match (packed, long) {
        (Packed::Tcp4 { ip, port }, _) => {
            hasher.hash_one(u64::from(u32::from_be_bytes(*ip)) << 16 | u64::from(*port))
        }
        (Packed::Short { len, buf }, _) => hasher.hash_one(&buf[..usize::from(*len)]),
        (Packed::Long { .. }, text) => hasher.hash_one(text.unwrap_or_default().as_bytes()),
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_addr(f, &self.packed, self.long.as_deref())
    }
}

pub(super) fn write_addr(
    f: &mut fmt::Formatter<'_>,
    packed: &Packed,
    long: Option<&str>,
) -> fmt::Result {
    match packed {
        Packed::Tcp4 {
            ip: [a, b, c, d],
            port,
        } => write!(f, "tcp@{a}.{b}.{c}.{d}:{port}"),
        Packed::Short { len, buf } => {
            f.write_str(std::str::from_utf8(&buf[..usize::from(*len)]).expect("from a str"))
        }
        Packed::Long { .. } => f.write_str(long.unwrap_or_default()),
    }
}

/// `tcp@A.B.C.D:PORT` in its one canonical spelling (decimal, no leading
/// zeros), or `None`. One pass: every heartbeat parses its address.
pub(super) fn parse_tcp4(addr: &str) -> Option<Packed> {
    let b = addr.strip_prefix("tcp@")?.as_bytes();
    // Five numbers: four octets after `.`, `.`, `.`, then the port after `:`.
    let mut parts = [0u32; 5];
    let (mut part, mut digits) = (0, 0);
    for &c in b {
        match c {
            b'0'..=b'9' => {
                // A leading zero, or more digits than a port has.
                if (digits == 1 && parts[part] == 0) || digits == 5 {
                    return None;
                }
                parts[part] = parts[part] * 10 + u32::from(c - b'0');
                digits += 1;
            }
            b'.' if part < 3 && digits > 0 => (part, digits) = (part + 1, 0),
            b':' if part == 3 && digits > 0 => (part, digits) = (4, 0),
            _ => return None,
        }
    }
    let [a, b, c, d, port] = parts;
    if part != 4 || digits == 0 || a.max(b).max(c).max(d) > 255 || port > 65535 {
        return None;
    }
    Some(Packed::Tcp4 {
        ip: [a as u8, b as u8, c as u8, d as u8],
        port: port as u16,
    })
}
