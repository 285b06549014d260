//! [`Op::RenewUdp`](super::Op::RenewUdp): renewals by datagram, a window
//! of them in flight on one socket a thread.
//!
//! Each thread renews its share of the servers (every `threads`-th),
//! keeping `window` datagrams in flight: a reply lets the next one go.
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
    let mut buf = Vec::with_capacity(wire::MAX_REQUEST);
    let mut reply = [0u8; wire::REPLY_LEN + 1];
    let token = load.token.as_deref();
    let mut send = |inflight: &mut VecDeque<Instant>, tally: &mut Tally| -> bool {
        if !budget.take() {
            return false;
        }
        let i = next;
        next = (next + 1) % load.addrs.len();
        stamps[i] = wire::unix_ms().max(stamps[i] + 1);
        wire::encode(&mut buf, &load.service, &load.addrs[i], stamps[i], token);
        if socket.send(&buf).is_err() {
            tally.error("send");
            return true;
        }
        inflight.push_back(Instant::now());
        true
    };
    let mut sending = true;
    // Bounded: every pass sends one datagram from the budget, or takes a
    // reply or a timeout of what is in flight; the budget ends at its
    // deadline, and then what is in flight is waited for once.
    loop {
        while sending && inflight.len() < load.window {
            sending = send(&mut inflight, &mut tally);
        }
        if inflight.is_empty() {
            return tally;
        }
        match socket.recv(&mut reply) {
            Ok(n) => {
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
            Err(_) => {
                for _ in inflight.drain(..) {
                    tally.error("timeout");
                }
            }
        }
    }
}
