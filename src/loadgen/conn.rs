//! The blocking side of a run: where the requests go, the requests
//! themselves, prepared once, and the blocking connection that registers
//! the servers before the load, removes them after, and warms up each
//! connection the event loop then takes over.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{ListFormat, Op};
use crate::error::{Error, Result};
use crate::protocol::{HEADER_SERVER, HEADER_TTL};

/// Where the requests go, with the request texts prepared once.
#[derive(Clone)]
pub(super) struct Target {
    addr: SocketAddr,
    pub(super) host: String,
    /// The Host header's value, followed by the Authorization header when
    /// a token is set: what every request template puts after `Host: `.
    pub(super) head: String,
    pub(super) path: String,
}

impl Target {
    /// The registry's IP, where its UDP port is too.
    pub(super) fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }

    /// The registry's HTTP address.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry's HTTP port.
    pub(super) fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(super) fn parse(registry: &str, service: &str) -> Result<Target> {
        let bad = || {
            Error::config(
                "registry",
                format!("{registry:?}: use http://host:port/path"),
            )
        };
        let rest = registry.strip_prefix("http://").ok_or_else(bad)?;
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let addr = host
            .to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .ok_or_else(bad)?;
        let mut path = format!("/{path}");
        if !service.is_empty() {
            path = format!("{}/{service}", path.trim_end_matches('/'));
        }
        Ok(Target {
            addr,
            host: host.to_string(),
            head: host.to_string(),
            path,
        })
    }
}

/// One kept-alive connection with a reusable read buffer.
pub(super) struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
}

/// An answer's status, or what went wrong.
pub(super) enum Outcome {
    Status(u16),
    Failed(&'static str),
}

impl Conn {
    pub(super) fn open(target: &Target, timeout: Duration) -> Result<Conn> {
        let url = format!("http://{}{}", target.host, target.path);
        let s =
            TcpStream::connect_timeout(&target.addr, timeout).map_err(|e| Error::Unreachable {
                url: url.clone(),
                source: Box::new(e),
            })?;
        let setup = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))
        };
        setup(&s).map_err(|e| Error::io("set up a load connection", e))?;
        let writer = s
            .try_clone()
            .map_err(|e| Error::io("set up a load connection", e))?;
        Ok(Conn {
            reader: BufReader::with_capacity(256 * 1024, s),
            writer,
            line: String::new(),
        })
    }

    /// Registers `addr` for an hour: the same request the renewals send.
    pub(super) fn register(&mut self, target: &Target, addr: &str) -> Result<()> {
        self.expect_ok(target, &Requests::post(target, addr, "1h"))
    }

    pub(super) fn delete(&mut self, target: &Target, addr: &str) -> Result<()> {
        let req = format!(
            "DELETE {} HTTP/1.1\r\nHost: {}\r\n{HEADER_SERVER}: {addr}\r\n\r\n",
            target.path, target.head
        );
        self.expect_ok(target, req.as_bytes())
    }

    pub(super) fn expect_ok(&mut self, target: &Target, req: &[u8]) -> Result<()> {
        let url = format!("http://{}{}", target.host, target.path);
        match self.exchange(req) {
            Outcome::Status(s) if (200..300).contains(&s) => Ok(()),
            Outcome::Status(status) => Err(Error::Status {
                url,
                status,
                reason: String::new(),
            }),
            Outcome::Failed(what) => Err(Error::Unreachable {
                url,
                source: what.into(),
            }),
        }
    }

    /// Sends one request and reads its whole answer.
    pub(super) fn exchange(&mut self, req: &[u8]) -> Outcome {
        if self.writer.write_all(req).is_err() {
            return Outcome::Failed("write");
        }
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => return Outcome::Failed("closed"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Failed("timeout");
            }
            Err(_) => return Outcome::Failed("read"),
        }
        let Some(status) = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
        else {
            return Outcome::Failed("bad answer");
        };
        let mut length = 0usize;
        loop {
            self.line.clear();
            match self.reader.read_line(&mut self.line) {
                Ok(0) | Err(_) => return Outcome::Failed("read"),
                Ok(_) => {}
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':')
                && n.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut rest = length;
        while rest > 0 {
            let buf = match self.reader.fill_buf() {
                Ok([]) | Err(_) => return Outcome::Failed("read"),
                Ok(b) => b.len().min(rest),
            };
            self.reader.consume(buf);
            rest -= buf;
        }
        Outcome::Status(status)
    }
}

/// The requests a run sends, prepared once and shared by the threads.
pub(super) struct Requests {
    pub(super) get: Vec<u8>,
    renewals: Vec<Vec<u8>>,
    pub(super) path: String,
    host: String,
    op: Op,
}

impl Requests {
    pub(super) fn new(target: &Target, addrs: &[String], op: Op, format: ListFormat) -> Requests {
        let query = match format {
            ListFormat::Seed => "",
            ListFormat::Text => "?format=text",
        };
        Requests {
            get: format!(
                "GET {}{query} HTTP/1.1\r\nHost: {}\r\n\r\n",
                target.path, target.head
            )
            .into_bytes(),
            renewals: addrs.iter().map(|a| Self::post(target, a, "1h")).collect(),
            path: target.path.clone(),
            host: target.head.clone(),
            op,
        }
    }

    /// A registration or renewal of `addr` with `ttl`.
    pub(super) fn post(target: &Target, addr: &str, ttl: &str) -> Vec<u8> {
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{HEADER_SERVER}: {addr}\r\n{HEADER_TTL}: {ttl}\r\nContent-Length: 0\r\n\r\n",
            target.path, target.head
        )
        .into_bytes()
    }

    /// The `i`-th request of client `id`.
    pub(super) fn nth<'a>(&'a self, id: usize, i: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        let renewal = |i: usize| self.renewals.get(i % self.renewals.len().max(1));
        match self.op {
            // RenewUdp sends datagrams (`udp.rs`); its HTTP side only
            // warms up.
            Op::Get | Op::RenewUdp => &self.get,
            Op::Renew => renewal(i).map_or(&self.get, |r| r),
            Op::Mixed if i.is_multiple_of(10) => renewal(i / 10).map_or(&self.get, |r| r),
            Op::Mixed => &self.get,
            Op::Register => {
                scratch.clear();
                let _ = write!(
                    scratch,
                    "POST {} HTTP/1.1\r\nHost: {}\r\n{HEADER_SERVER}: tcp@load-{id}-{i}:1\r\n{HEADER_TTL}: 1s\r\nContent-Length: 0\r\n\r\n",
                    self.path, self.host
                );
                scratch
            }
        }
    }
}

/// A new connection that has completed one GET (not counted), or `None`.
///
/// Why: connections opened all at once can meet tiny_http's lost wake-up
/// (a server without regcenter's guard may never answer some of them), so
/// each is opened and proven before the measured load starts.
pub(super) fn warm_connection(
    target: &Target,
    reqs: &Requests,
    timeout: Duration,
) -> Option<TcpStream> {
    for _ in 0..3 {
        let Ok(mut c) = Conn::open(target, timeout.min(Duration::from_secs(1))) else {
            continue;
        };
        if let Outcome::Status(_) = c.exchange(&reqs.get) {
            let stream = c.reader.into_inner();
            let _ = stream.set_read_timeout(None);
            return Some(stream);
        }
    }
    None
}
