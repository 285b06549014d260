//! [`Op::RenewUdp`](super::Op::RenewUdp): renewals by datagram, a window
//! of them in flight on one socket a thread.
//!
//! Each thread renews its share of the servers (every `threads`-th),
//! keeping `window` datagrams in flight: replies let the next ones go, up
//! to 32 a system call each way on Linux (sendmmsg, recvmmsg).
//! Loopback keeps datagrams in order, so a reply is timed against the
//! oldest send in flight. When no reply comes within the timeout, what was
//! in flight counts as `timeout` and the window is sent again.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use super::Budget;
use super::event_loop::Tally;
use crate::server::udp::{self as wire, Code};

/// What one UDP load thread renews, and how.
pub(super) struct UdpLoad {
    pub(super) to: SocketAddr,
    pub(super) service: String,
    /// This thread's servers.
    pub(super) addrs: Vec<String>,
    pub(super) window: usize,
    pub(super) token: Option<Vec<u8>>,
    pub(super) timeout: std::time::Duration,
}

pub(super) fn udp_loop(load: &UdpLoad, budget: &Budget) -> Tally {
    let mut tally = Tally::default();
    let any: SocketAddr = match load.to {
        SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::LOCALHOST, 0).into(),
    };
    let socket = match UdpSocket::bind(any).and_then(|s| {
        s.connect(load.to)?;
        s.set_read_timeout(Some(load.timeout))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(_) => {
            tally.errors.insert("connect".into(), 1);
            return tally;
        }
    };
    if load.addrs.is_empty() {
        return tally;
    }
    // Each server's last stamp: with a token, a stamp must be above the
    // last one the registry accepted for that server.
    let mut stamps = vec![0u64; load.addrs.len()];
    let mut next = 0usize;
    let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(load.window);
    let mut out: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(wire::MAX_REQUEST))
        .collect();
    let mut replies = [[0u8; wire::REPLY_LEN + 1]; BATCH];
    let mut lens = [0usize; BATCH];
    let token = load.token.as_deref();
    let mut sending = true;
    // Bounded: every pass sends datagrams from the budget, or takes
    // replies or a timeout of what is in flight; the budget ends at its
    // deadline, and then what is in flight is waited for once.
    loop {
        while sending && inflight.len() < load.window {
            let mut batch = 0;
            while batch < BATCH && inflight.len() + batch < load.window {
                if !budget.take() {
                    sending = false;
                    break;
                }
                let i = next;
                next = (next + 1) % load.addrs.len();
                stamps[i] = wire::unix_ms().max(stamps[i] + 1);
                wire::encode(
                    &mut out[batch],
                    &load.service,
                    &load.addrs[i],
                    stamps[i],
                    token,
                );
                batch += 1;
            }
            let sent = send_all(&socket, &out[..batch]);
            for _ in sent..batch {
                tally.error("send");
            }
            let now = Instant::now();
            inflight.extend(std::iter::repeat_n(now, sent));
            if sent < batch {
                break;
            }
        }
        if inflight.is_empty() {
            return tally;
        }
        match recv_some(&socket, &mut replies, &mut lens) {
            Ok(got) => {
                for (reply, n) in replies.iter().zip(lens).take(got) {
                    let Some(sent) = inflight.pop_front() else {
                        continue;
                    };
                    match wire::decode_reply(&reply[..n]) {
                        Some((Code::Renewed, _)) => {
                            let us = sent.elapsed().as_micros();
                            tally.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                        Some((Code::Unknown, _)) => tally.error("unknown"),
                        Some((Code::Refused, _)) => tally.error("refused"),
                        None => tally.error("bad answer"),
                    }
                }
            }
            Err(_) => {
                for _ in inflight.drain(..) {
                    tally.error("timeout");
                }
            }
        }
    }
}

/// Datagrams one system call sends or receives at most (Linux: sendmmsg
/// and recvmmsg), so that the generator spends little next to the
/// registry, which batches the same way.
const BATCH: usize = 32;

/// Sends `datagrams` on the connected `socket`; how many went.
#[cfg(target_os = "linux")]
fn send_all(socket: &UdpSocket, datagrams: &[Vec<u8>]) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero bytes are a valid iovec and mmsghdr (null
    // pointers, zero lengths).
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let n = datagrams.len().min(BATCH);
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: datagrams[i].as_ptr().cast_mut().cast(),
            iov_len: datagrams[i].len(),
        };
        msgs[i].msg_hdr.msg_iov = &raw mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    // Bounded: each pass sends one at least, or stops.
    while sent < n {
        // SAFETY: every header points at its own iovec and datagram, alive
        // for the call; the kernel only reads them.
        let k = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs[sent..].as_mut_ptr(),
                (n - sent) as libc::c_uint,
                0,
            )
        };
        if k <= 0 {
            break;
        }
        sent += k as usize;
    }
    sent
}

#[cfg(not(target_os = "linux"))]
fn send_all(socket: &UdpSocket, datagrams: &[Vec<u8>]) -> usize {
    datagrams
        .iter()
        .take_while(|d| socket.send(d).is_ok())
        .count()
}

/// Waits (up to the socket's read timeout) for one reply, then takes the
/// ones already there; how many, their lengths in `lens`.
#[cfg(target_os = "linux")]
fn recv_some(
    socket: &UdpSocket,
    bufs: &mut [[u8; wire::REPLY_LEN + 1]; BATCH],
    lens: &mut [usize; BATCH],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `send_all`.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        };
        msgs[i].msg_hdr.msg_iov = &raw mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at its own iovec and buffer, alive and
    // unaliased for the call.
    let got = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for i in 0..got as usize {
        lens[i] = msgs[i].msg_len as usize;
    }
    Ok(got as usize)
}

#[cfg(not(target_os = "linux"))]
fn recv_some(
    socket: &UdpSocket,
    bufs: &mut [[u8; wire::REPLY_LEN + 1]; BATCH],
    lens: &mut [usize; BATCH],
) -> std::io::Result<usize> {
    lens[0] = socket.recv(&mut bufs[0])?;
    Ok(1)
}
