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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{Raw, parse};

/// The protocol's base path.
pub const P: &str = "/myRPC/registry";

/// Opens a connection and writes `bytes` in one write.
pub fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.write_all(bytes).expect("write the requests");
    s
}

/// Opens a connection that reads nothing (its receive buffer is the
/// smallest the kernel allows, so what the server sends stays in the
/// server's send buffer) and writes `bytes`.
pub fn send_unread(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(2))
        .expect("connect");
    let mut s: TcpStream = sock.into();
    s.write_all(bytes).expect("write the requests");
    s
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A request head with no body, kept alive.
pub fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Reads `n` answers off `s` (each framed by its Content-Length), or as
/// many as arrive before `within` passes or the connection ends.
pub fn answers(s: &mut TcpStream, n: usize, within: Duration) -> Vec<Raw> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while out.len() < n {
        // Take every complete answer already buffered.
        while out.len() < n {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = parse(&buf[..end + 4]);
            let len: usize = head
                .header("Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            out.push(Raw { body, ..head });
        }
        if out.len() >= n {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    out
}

/// Whether the server closed `s` (EOF or reset) within `within`, after
/// reading and discarding whatever it sent first.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}
