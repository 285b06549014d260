//! Renewals over UDP: one socket, one thread, a datagram a renewal.
//!
//! Heartbeats are small, idempotent and tolerate loss (three chances a
//! TTL), so a renewal need not hold a connection: 10 000 servers beating
//! here hold no thread and no descriptor of the registry, where over HTTP
//! each kept-alive connection holds both. A datagram renews one entry
//! that is registered already ([`Registry::renew_existing`]): it never
//! creates one and never changes a TTL, weight, metadata or status, which
//! stay HTTP's. The format is in the README ("UDP renewals") and below.
//!
//! Request (big-endian), 17 to [`MAX_REQUEST`] bytes:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0–3   | magic `RCHB` |
//! | 4     | version, 1 |
//! | 5     | flags: bit 0 set when a tag ends the datagram; the others 0 |
//! | 6–13  | stamp: the sender's Unix time in milliseconds, increasing |
//! | 14    | service length S, 0–128 (0: the default service) |
//! | 15    | address length A, 1–255 |
//! | 16…   | the service, then the address |
//! | last 32 | with flag bit 0: HMAC-SHA256 of every byte before it, keyed with the token |
//!
//! Reply, [`REPLY_LEN`] bytes, never more than the request: the magic, the
//! version, a code (0 renewed, 1 unknown: register again over HTTP, 2
//! refused) and the request's stamp, so a sender matches it to its
//! request.
//!
//! Why these choices:
//! - No TTL in the datagram: a renewal keeps the TTL the entry was
//!   registered with, so a datagram cannot change what an HTTP
//!   registration set, and an entry's expiry is told by HTTP alone.
//! - With a token the datagram proves it without carrying it (there is no
//!   TLS to hide it in): the tag covers the stamp, and a stamp more than
//!   [`WINDOW`] away from the registry's clock, or not above the last one
//!   accepted for that entry, is refused, so a recorded datagram cannot
//!   be replayed (a duplicate neither).
//! - A datagram shorter than a reply, or not of this protocol, gets no
//!   answer; refusals are answered at most [`REFUSALS_PER_SECOND`] times
//!   a second. A reply is never larger than its request: the registry
//!   cannot amplify traffic towards a forged source, and refusals cannot
//!   be used to flood one at the rate of the requests.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::metrics::Metrics;
use crate::registry::Registry;

/// The first bytes of every datagram of this protocol.
pub(crate) const MAGIC: [u8; 4] = *b"RCHB";
/// The datagram format's version.
pub(crate) const VERSION: u8 = 1;
/// Flag bit 0: a tag ends the datagram.
pub(crate) const FLAG_TAGGED: u8 = 1;
/// Bytes before the service name.
const HEAD: usize = 16;
/// Bytes of an HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;
/// The largest request: a 128-byte service, a 255-byte address, a tag.
pub(crate) const MAX_REQUEST: usize = HEAD + 128 + 255 + TAG_LEN;
/// Bytes of every reply; the smallest request (no service, a one-byte
/// address, no tag) is 17.
pub(crate) const REPLY_LEN: usize = 14;
/// How far a tagged datagram's stamp may be from the registry's clock.
pub(crate) const WINDOW: Duration = Duration::from_secs(30);
/// Most refusals answered a second; the rest are dropped unanswered.
pub(crate) const REFUSALS_PER_SECOND: u32 = 100;
/// How long the thread waits for a datagram before it looks at the stop
/// flag anyway (a stop also wakes it with a datagram of its own).
const POLL: Duration = Duration::from_secs(1);

/// What a reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// The entry was renewed.
    Renewed = 0,
    /// No such entry: register again over HTTP.
    Unknown = 1,
    /// A wrong or missing tag, a stamp out of its window or replayed, or
    /// a datagram that does not parse.
    Refused = 2,
}

/// The HMAC-SHA256 of `data` keyed with `token`.
fn tag(token: &[u8], data: &[u8]) -> [u8; TAG_LEN] {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Writes the renewal of `addr` in `service` stamped `stamp` into `out`
/// (cleared first), tagged when a token is given. The caller has checked
/// the service (at most 128 bytes) and the address (1 to 255).
pub(crate) fn encode(
    out: &mut Vec<u8>,
    service: &str,
    addr: &str,
    stamp: u64,
    token: Option<&[u8]>,
) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(if token.is_some() { FLAG_TAGGED } else { 0 });
    out.extend_from_slice(&stamp.to_be_bytes());
    out.push(u8::try_from(service.len()).expect("a checked service name"));
    out.push(u8::try_from(addr.len()).expect("a checked address"));
    out.extend_from_slice(service.as_bytes());
    out.extend_from_slice(addr.as_bytes());
    if let Some(token) = token {
        let t = tag(token, out);
        out.extend_from_slice(&t);
    }
}

/// The code and echoed stamp of a reply, `None` for anything else.
pub(crate) fn decode_reply(reply: &[u8]) -> Option<(Code, u64)> {
    if reply.len() != REPLY_LEN || reply[..4] != MAGIC || reply[4] != VERSION {
        return None;
    }
    let code = match reply[5] {
        0 => Code::Renewed,
        1 => Code::Unknown,
        2 => Code::Refused,
        _ => return None,
    };
    Some((code, u64::from_be_bytes(reply[6..14].try_into().ok()?)))
}

/// Milliseconds since the Unix epoch by the system clock (0 before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `r` carries a good tag and a stamp within [`WINDOW`] of the
/// registry's clock.
fn authentic(token: &[u8], r: &Renewal<'_>) -> bool {
    let Some((body, given)) = r.tagged else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(body);
    // Compared in constant time.
    if mac.verify_slice(given).is_err() {
        return false;
    }
    unix_ms().abs_diff(r.stamp) <= WINDOW.as_millis() as u64
}

/// What a datagram asks, once parsed.
struct Renewal<'a> {
    stamp: u64,
    service: &'a str,
    addr: &'a str,
    /// The bytes the tag covers, and the tag, when there is one.
    tagged: Option<(&'a [u8], &'a [u8])>,
}

/// Parses a request; `None` for a datagram of the wrong size or shape.
fn parse(d: &[u8]) -> Option<Renewal<'_>> {
    if d.len() < HEAD || d.len() > MAX_REQUEST || d[..4] != MAGIC || d[4] != VERSION {
        return None;
    }
    let flags = d[5];
    if flags & !FLAG_TAGGED != 0 {
        return None;
    }
    let stamp = u64::from_be_bytes(d[6..14].try_into().ok()?);
    let (s, a) = (usize::from(d[14]), usize::from(d[15]));
    let tag_len = if flags & FLAG_TAGGED != 0 { TAG_LEN } else { 0 };
    if s > 128 || a == 0 || d.len() != HEAD + s + a + tag_len {
        return None;
    }
    let service = std::str::from_utf8(&d[HEAD..HEAD + s]).ok()?;
    let addr = std::str::from_utf8(&d[HEAD + s..HEAD + s + a]).ok()?;
    let body = HEAD + s + a;
    Some(Renewal {
        stamp,
        service,
        addr,
        tagged: (tag_len != 0).then(|| (&d[..body], &d[body..])),
    })
}

/// The receiving side: checks, renews, answers, counts.
struct Receiver {
    registry: Registry,
    /// The store shared with other front-ends, which renews instead.
    shared: Option<Arc<super::shared::Inner>>,
    metrics: Arc<Metrics>,
    token: Option<Vec<u8>>,
    /// The last stamp accepted per entry (service, NUL, address), kept
    /// while it is within [`WINDOW`]: older stamps are refused by the
    /// window already. Only with a token; only tagged datagrams add to it.
    last: HashMap<Vec<u8>, u64>,
    /// When `last` is next pruned of stamps out of the window.
    prune_at: usize,
    /// Refusals answered in the current second.
    refusals: (Instant, u32),
}

impl Receiver {
    /// The code to answer `d` with, `None` for no answer; counts it.
    fn handle(&mut self, d: &[u8]) -> Option<Code> {
        let metrics = self.metrics.clone();
        let c = &metrics.counters;
        let Some(r) = parse(d) else {
            c.udp_malformed.fetch_add(1, Ordering::Relaxed);
            // Answered only when the reply fits and can name the request.
            return (d.len() >= REPLY_LEN && d[..4] == MAGIC && d[4] == VERSION)
                .then_some(Code::Refused)
                .filter(|_| self.may_refuse());
        };
        if let Some(good_tag) = self.token.as_deref().map(|t| authentic(t, &r)) {
            let why = if r.tagged.is_none() {
                Some("no tag")
            } else if !good_tag {
                Some("a wrong tag, or a stamp out of its window")
            } else if !self.fresh(r.service, r.addr, r.stamp) {
                Some("a stamp not above the last accepted: a replay or a duplicate")
            } else {
                None
            };
            if let Some(why) = why {
                c.udp_refused.fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    "UDP renewal of {:?} in {:?} refused: {why}",
                    r.addr,
                    r.service
                );
                return Some(Code::Refused).filter(|_| self.may_refuse());
            }
        }
        let renewed = match &self.shared {
            Some(shared) => shared.renew_existing(r.service, r.addr),
            None => self.registry.renew_existing(r.service, r.addr),
        };
        match renewed {
            Ok(true) => {
                c.udp_renewed.fetch_add(1, Ordering::Relaxed);
                Some(Code::Renewed)
            }
            Ok(false) => {
                c.udp_unknown.fetch_add(1, Ordering::Relaxed);
                Some(Code::Unknown)
            }
            Err(_) => {
                c.udp_malformed.fetch_add(1, Ordering::Relaxed);
                Some(Code::Refused).filter(|_| self.may_refuse())
            }
        }
    }

    /// Whether a tagged, authentic stamp is newer than the last accepted
    /// for its entry (a replay or a duplicate is not); records it.
    fn fresh(&mut self, service: &str, addr: &str, stamp: u64) -> bool {
        let mut key = Vec::with_capacity(service.len() + 1 + addr.len());
        key.extend_from_slice(service.as_bytes());
        key.push(0);
        key.extend_from_slice(addr.as_bytes());
        match self.last.get_mut(&key) {
            Some(last) if *last >= stamp => return false,
            Some(last) => *last = stamp,
            None => {
                self.last.insert(key, stamp);
            }
        }
        if self.last.len() >= self.prune_at {
            let oldest = unix_ms().saturating_sub(WINDOW.as_millis() as u64);
            self.last.retain(|_, s| *s >= oldest);
            self.prune_at = (self.last.len() * 2).max(1024);
        }
        true
    }

    /// Whether one more refusal may be answered this second.
    fn may_refuse(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.refusals.0) >= Duration::from_secs(1) {
            self.refusals = (now, 0);
        }
        self.refusals.1 += 1;
        self.refusals.1 <= REFUSALS_PER_SECOND
    }
}

/// The UDP side of a running server: its socket's address and its thread.
pub(crate) struct UdpRenewals {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpRenewals {
    /// Binds `bind` (when its port is taken and `or_any` is set, any free
    /// port of the same IP) and starts the thread `name`.
    pub(crate) fn start(
        bind: SocketAddr,
        or_any: bool,
        registry: Registry,
        shared: Option<Arc<super::shared::Inner>>,
        metrics: Arc<Metrics>,
        token: Option<Vec<u8>>,
        name: String,
    ) -> io::Result<UdpRenewals> {
        let socket = match bind_udp(bind) {
            Err(e) if or_any && e.kind() == io::ErrorKind::AddrInUse => {
                bind_udp(SocketAddr::new(bind.ip(), 0))?
            }
            other => other?,
        };
        let local = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let mut rx = Receiver {
            registry,
            shared,
            metrics,
            token,
            last: HashMap::new(),
            prune_at: 1024,
            refusals: (Instant::now(), 0),
        };
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || serve(&socket, &flag, &mut rx))?;
        Ok(UdpRenewals {
            local,
            stop,
            thread: Some(thread),
        })
    }

    /// The port datagrams go to.
    pub(crate) fn port(&self) -> u16 {
        self.local.port()
    }

    /// Stops and joins the thread; true when it had panicked.
    pub(crate) fn stop(&mut self) -> bool {
        let Some(t) = self.thread.take() else {
            return false;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread at once; the poll timeout ends it anyway should
        // this datagram be lost.
        let ip = match self.local.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let from = match ip {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        if let Ok(s) = UdpSocket::bind(from) {
            let _ = s.send_to(&[], SocketAddr::new(ip, self.local.port()));
        }
        t.join().is_err()
    }
}

impl Drop for UdpRenewals {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A UDP socket on `addr` with room for bursts of renewals.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Bursts (every server of a fleet restarted at once, a benchmark) wait
    // in the kernel's buffer instead of being dropped; the kernel caps it
    // at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(POLL))?;
    Ok(socket)
}

/// The datagrams one receive takes at most (Linux): one system call for
/// up to this many datagrams, and one for their replies, where a call a
/// datagram each way cost most of a renewal's time.
#[cfg(target_os = "linux")]
const BATCH: usize = 32;

#[cfg(target_os = "linux")]
fn serve(socket: &UdpSocket, stop: &AtomicBool, rx: &mut Receiver) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    // Room for one byte past the largest request, so an oversized
    // datagram shows as one (the kernel truncates to the buffer).
    let mut bufs = vec![[0u8; MAX_REQUEST + 1]; BATCH];
    let mut replies = [[0u8; REPLY_LEN]; BATCH];
    for r in &mut replies {
        r[..4].copy_from_slice(&MAGIC);
        r[4] = VERSION;
    }
    // SAFETY: all-zero bytes are a valid sockaddr_storage, iovec and
    // mmsghdr (null pointers, zero lengths).
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut out_iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut out: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    while !stop.load(Ordering::SeqCst) {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: bufs[i].len(),
            };
            msgs[i].msg_hdr.msg_name = (&raw mut names[i]).cast();
            msgs[i].msg_hdr.msg_namelen = name_len;
            msgs[i].msg_hdr.msg_iov = &raw mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_len = 0;
        }
        // SAFETY: every header points at its own buffer, iovec and name,
        // all alive and unaliased for the call. MSG_WAITFORONE: wait (up
        // to the socket's receive timeout) for one, then take what is
        // there without waiting.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            // A timeout, a signal, or an ICMP error for an earlier reply
            // (a sender that went away): nothing to do but carry on.
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) {
                log::debug!("UDP receive: {e}");
            }
            continue;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut n_out = 0;
        for i in 0..got as usize {
            let d = &bufs[i][..msgs[i].msg_len as usize];
            let Some(code) = rx.handle(d) else { continue };
            let r = &mut replies[n_out];
            r[5] = code as u8;
            r[6..14].copy_from_slice(&d[6..14]);
            out_iovs[n_out] = libc::iovec {
                iov_base: r.as_mut_ptr().cast(),
                iov_len: REPLY_LEN,
            };
            out[n_out].msg_hdr.msg_name = (&raw mut names[i]).cast();
            out[n_out].msg_hdr.msg_namelen = msgs[i].msg_hdr.msg_namelen;
            out[n_out].msg_hdr.msg_iov = &raw mut out_iovs[n_out];
            out[n_out].msg_hdr.msg_iovlen = 1;
            n_out += 1;
        }
        let mut sent = 0;
        // Bounded: each pass sends one reply at least, or gives up on the
        // batch.
        while sent < n_out {
            // SAFETY: as above, for the replies' headers.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    out[sent..].as_mut_ptr(),
                    (n_out - sent) as libc::c_uint,
                    0,
                )
            };
            if n <= 0 {
                // One reply that cannot be sent (its sender gone) is
                // skipped; the others still go.
                log::debug!("UDP reply: {}", io::Error::last_os_error());
                sent += 1;
            } else {
                sent += n as usize;
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn serve(socket: &UdpSocket, stop: &AtomicBool, rx: &mut Receiver) {
    let mut buf = [0u8; MAX_REQUEST + 1];
    let mut reply = [0u8; REPLY_LEN];
    reply[..4].copy_from_slice(&MAGIC);
    reply[4] = VERSION;
    while !stop.load(Ordering::SeqCst) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            // A timeout, a signal, or an ICMP error for an earlier reply.
            Err(_) => continue,
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let d = &buf[..n];
        let Some(code) = rx.handle(d) else { continue };
        reply[5] = code as u8;
        reply[6..14].copy_from_slice(&d[6..14]);
        if let Err(e) = socket.send_to(&reply, from) {
            log::debug!("UDP reply to {from}: {e}");
        }
    }
}
