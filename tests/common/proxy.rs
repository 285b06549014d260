//! A fault-injecting TCP proxy in front of a real registry, switched at run
//! time between passing traffic through and the ways a broken or hostile
//! registry (or whatever sits in front of it) can answer.
//!
//! Each accepted connection is served in the fault in force when it was
//! accepted. Switching the fault closes every open connection (a connection
//! that was passing traffic when the proxy switches to [`Fault::Stall`]
//! stays open and stops forwarding instead), so a client's pooled
//! connection meets the new fault on its next call.
//!
//! Every thread is named and joined on `Drop`; every socket has timeouts;
//! every loop is bounded by a count or by the connection's deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a blocked read wakes to look at the stop flag and the fault.
const TICK: Duration = Duration::from_millis(20);
/// Longest time any write may block (a client that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest life of one proxied connection.
const CONN_LIFETIME: Duration = Duration::from_secs(30);
/// Most connections one proxy accepts in its life.
const MAX_CONNS: usize = 20_000;
/// Largest request head read before answering.
const MAX_REQUEST_HEAD: usize = 64 << 10;
/// Size of the header sent by [`Fault::HugeHeader`]: twice what the
/// library's clients accept.
const HUGE_HEADER: usize = 2 << 20;

/// What the proxy does with the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forwards bytes both ways unchanged.
    Pass,
    /// Accepts, reads and never answers; a connection that was passing
    /// traffic stops forwarding in both directions.
    Stall,
    /// Forwards the request at once and the answer one byte per delay.
    Drip(Duration),
    /// Forwards the request, then sends the client half of the answer's
    /// first read and closes.
    CloseMidAnswer,
    /// Answers bytes that are not HTTP at all.
    NotHttp,
    /// Answers a well-formed status line and a header line without a colon.
    NoColon,
    /// Answers a 200 whose head is 2 MiB.
    HugeHeader,
    /// Answers `307` with a `Location` that points back at the proxy.
    RedirectToSelf,
    /// Answers this status with this plain-text body.
    Reply(u16, &'static str),
}

/// The proxy; dropping it stops it and joins its threads.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// The fault in force and its epoch, bumped on every switch.
    fault: Mutex<(u64, Fault)>,
    /// Requests met by the fault in force (forwarded chunks for `Drip`).
    hits: AtomicUsize,
    stop: AtomicBool,
    conns: Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`, passing traffic
    /// through until told otherwise.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            addr,
            upstream,
            fault: Mutex::new((0, Fault::Pass)),
            hits: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(&s, &listener))
            .expect("spawn the proxy's acceptor");
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The registry URL through the proxy (default base path).
    pub fn url(&self) -> String {
        format!("http://{}/myRPC/registry", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `fault`: open connections are closed (or, from passing to
    /// stalling, stop forwarding) and the hit count starts again at zero.
    pub fn set(&self, fault: Fault) {
        let mut f = self.shared.fault.lock();
        f.0 += 1;
        f.1 = fault;
        self.shared.hits.store(0, Ordering::SeqCst);
    }

    /// How many requests the fault in force has met since it was set.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor from its blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let conns: Vec<_> = self.shared.conns.lock().drain(..).collect();
        for c in conns {
            let _ = c.join();
        }
    }
}

impl Shared {
    fn fault(&self) -> (u64, Fault) {
        self.fault.lock().clone()
    }

    fn epoch(&self) -> u64 {
        self.fault.lock().0
    }

    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a connection of `epoch` must end now.
    fn over(&self, epoch: u64, deadline: Instant) -> bool {
        self.stop.load(Ordering::SeqCst) || self.epoch() != epoch || Instant::now() >= deadline
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for _ in 0..MAX_CONNS {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, _)) = accepted else { continue };
        let s = shared.clone();
        let conn = thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || serve(&s, client))
            .expect("spawn a proxy connection thread");
        let mut conns = shared.conns.lock();
        // Joins the finished ones so that the list stays short.
        let (done, running): (Vec<_>, Vec<_>) = conns.drain(..).partition(|c| c.is_finished());
        *conns = running;
        conns.push(conn);
        drop(conns);
        for c in done {
            let _ = c.join();
        }
    }
}

fn timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(TICK)).unwrap();
    s.set_write_timeout(Some(WRITE_TIMEOUT)).unwrap();
    let _ = s.set_nodelay(true);
}

fn serve(shared: &Arc<Shared>, client: TcpStream) {
    timeouts(&client);
    let deadline = Instant::now() + CONN_LIFETIME;
    let (epoch, fault) = shared.fault();
    match fault {
        Fault::Pass => pipe(shared, client, epoch, None, deadline),
        Fault::Drip(d) => pipe(shared, client, epoch, Some(d), deadline),
        Fault::Stall => {
            shared.hit();
            hold(shared, &client, epoch, deadline);
        }
        Fault::CloseMidAnswer => {
            let Some(head) = read_head(shared, &client, epoch, deadline) else {
                return;
            };
            shared.hit();
            let Ok(mut up) = TcpStream::connect_timeout(&shared.upstream, WRITE_TIMEOUT) else {
                return;
            };
            up.set_read_timeout(Some(WRITE_TIMEOUT)).unwrap();
            up.set_write_timeout(Some(WRITE_TIMEOUT)).unwrap();
            let mut buf = [0u8; 4096];
            if up.write_all(&head).is_ok()
                && let Ok(n) = up.read(&mut buf)
            {
                let _ = (&client).write_all(&buf[..n / 2]);
            }
            let _ = client.shutdown(Shutdown::Both);
        }
        garbage => {
            let Some(head) = read_head(shared, &client, epoch, deadline) else {
                return;
            };
            shared.hit();
            let _ = (&client).write_all(&answer(&garbage, shared.addr, &head));
            let _ = client.shutdown(Shutdown::Both);
        }
    }
}

/// The bytes a garbage fault answers to the request `head`.
fn answer(fault: &Fault, proxy: SocketAddr, head: &[u8]) -> Vec<u8> {
    match fault {
        Fault::NotHttp => b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe\x01 not http\r\n\r\n".to_vec(),
        Fault::NoColon => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Myrpc-Ttl 5s\r\n\
            Connection: close\r\n\r\n"
            .to_vec(),
        Fault::HugeHeader => {
            let mut a = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
            a.resize(a.len() + HUGE_HEADER, b'a');
            a.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            a
        }
        Fault::RedirectToSelf => {
            let line = String::from_utf8_lossy(head);
            let target = line.split(' ').nth(1).unwrap_or("/");
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{proxy}{target}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        }
        Fault::Reply(status, body) => format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        other => unreachable!("{other:?} is not a canned answer"),
    }
}

/// Reads up to the end of a request head (our clients send no bodies).
fn read_head(
    shared: &Shared,
    mut client: &TcpStream,
    epoch: u64,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !shared.over(epoch, deadline) && head.len() < MAX_REQUEST_HEAD {
        match client.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => {
                head.extend_from_slice(&buf[..n]);
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Some(head);
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Reads and discards whatever the client sends, answering nothing, until
/// the client leaves, the fault changes or the connection's time is up.
fn hold(shared: &Shared, mut client: &TcpStream, epoch: u64, deadline: Instant) {
    let mut buf = [0u8; 4096];
    while !shared.over(epoch, deadline) {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}

fn idle(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Forwards both ways (the answer a byte per `drip` if set) until either
/// side closes or the fault changes: to `Stall`, the connection is held
/// without forwarding; to anything else, it is closed.
fn pipe(
    shared: &Arc<Shared>,
    client: TcpStream,
    epoch: u64,
    drip: Option<Duration>,
    deadline: Instant,
) {
    let Ok(up) = TcpStream::connect_timeout(&shared.upstream, WRITE_TIMEOUT) else {
        return;
    };
    timeouts(&up);
    let (Ok(client2), Ok(up2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let s = shared.clone();
    let down = thread::Builder::new()
        .name("proxy-down".into())
        .spawn(move || forward(&s, &up2, &client2, epoch, false, drip, deadline))
        .expect("spawn a proxy forwarding thread");
    // Under `Drip`, each chunk of request is a hit: the answer it gets is
    // the one dripped.
    forward(shared, &client, &up, epoch, drip.is_some(), None, deadline);
    let _ = down.join();
}

/// `chunk` without an `X-Myrpc-Udp` header line: the proxy passes TCP
/// only, so the registry's UDP port is not reachable through it, and its
/// advertisement does not pass either. (On loopback a heartbeat would
/// otherwise renew at the registry's UDP port beside the proxy, past every
/// fault the proxy injects.) The registry writes an answer's head at once,
/// so the line is never split across reads here.
fn without_udp(chunk: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const NAME: &[u8] = b"\r\nX-Myrpc-Udp:";
    let Some(at) = chunk.windows(NAME.len()).position(|w| w == NAME) else {
        return chunk.into();
    };
    let end = chunk[at + 2..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(chunk.len(), |e| at + 2 + e);
    let mut out = chunk[..at].to_vec();
    out.extend_from_slice(&chunk[end..]);
    out.into()
}

/// Copies `from` to `to` (a byte per `drip` if set, counting each chunk
/// read as a hit if `count`), then closes both.
fn forward(
    shared: &Shared,
    mut from: &TcpStream,
    mut to: &TcpStream,
    epoch: u64,
    count: bool,
    drip: Option<Duration>,
    deadline: Instant,
) {
    let mut buf = [0u8; 16 << 10];
    'outer: while !shared.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        if shared.epoch() != epoch {
            if shared.fault().1 == Fault::Stall {
                let now = shared.epoch();
                hold(shared, from, now, deadline);
            }
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => match drip {
                None => {
                    if count {
                        shared.hit();
                    }
                    if to.write_all(&without_udp(&buf[..n])).is_err() {
                        break;
                    }
                }
                Some(d) => {
                    for b in without_udp(&buf[..n]).iter() {
                        if shared.over(epoch, deadline) || to.write_all(&[*b]).is_err() {
                            break 'outer;
                        }
                        thread::sleep(d);
                    }
                }
            },
            Err(e) if idle(&e) => {}
            Err(_) => break,
        }
    }
    // Ends the other direction's thread at once.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
