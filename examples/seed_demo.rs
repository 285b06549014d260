//! The GeeRPC tutorial's day-7 demo (`gee-rpc/day7-registry/main/main.go`)
//! with regcenter: a registry, two servers that announce themselves with a
//! [`Heartbeat`], and a client that finds them through a
//! [`RegistryDiscovery`] and calls them in turn.
//!
//! The seed's servers speak its RPC codec; here each is a tiny TCP server
//! that answers one line, `add 1 2`, with another, `3`, so the example needs
//! nothing beyond the standard library and regcenter. Everything listens on
//! 127.0.0.1 with a free port, every call has a timeout, and every thread is
//! joined before the program exits: 0 when each server answered its share
//! of the calls correctly, 1 with the reason otherwise.
//!
//! Run it with `cargo run --example seed_demo`.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use regcenter::{Discovery, Heartbeat, RegistryDiscovery, RegistryServer, SelectMode};

/// Bound of every connect, read and write, on both sides.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Calls the client makes; an even number, so round robin over two servers
/// gives each the same share.
const CALLS: u64 = 6;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seed_demo: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    // The seed listens on :9999; a free port lets the demo run anywhere.
    let registry = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .start()?;
    println!("registry at {}", registry.url());

    let servers = [
        ArithServer::start("arith-1")?,
        ArithServer::start("arith-2")?,
    ];
    let mut heartbeats = Vec::new();
    for server in &servers {
        // The first beat lands before `start` returns, so the client below
        // finds both servers without waiting.
        let hb = Heartbeat::builder(registry.url(), &server.announce()).start()?;
        println!("{} announced as {}", server.name, server.announce());
        heartbeats.push(hb);
    }

    let discovery = RegistryDiscovery::new(registry.url())?;
    let found = discovery.get_all()?;
    println!("discovered {found:?}");
    if found.len() != servers.len() {
        return Err(format!("expected {} servers, discovered {found:?}", servers.len()).into());
    }

    for i in 0..CALLS as i64 {
        let addr = discovery.get(SelectMode::RoundRobin)?;
        let (a, b) = (i, i * i);
        let sum = call(&addr, a, b)?;
        let name = servers
            .iter()
            .find(|s| s.announce() == addr)
            .map_or("a server not started here", |s| s.name);
        println!("{name} ({addr}) answered add {a} {b} = {sum}");
        if sum != a + b {
            return Err(format!("{addr} answered add {a} {b} with {sum}").into());
        }
    }
    for server in &servers {
        let served = server.served();
        if served != CALLS / 2 {
            return Err(format!(
                "{} served {served} of {CALLS} calls; round robin over two servers gives each {}",
                server.name,
                CALLS / 2
            )
            .into());
        }
    }

    // Stopping a heartbeat deregisters its server at once.
    for hb in heartbeats {
        hb.stop()?;
    }
    discovery.refresh()?;
    let left = discovery.get_all()?;
    println!("after the heartbeats stopped: {left:?}");
    if !left.is_empty() {
        return Err(format!("servers still listed after deregistration: {left:?}").into());
    }
    discovery.stop()?;
    for server in servers {
        server.stop()?;
    }
    registry.shutdown()?;
    println!("done");
    Ok(())
}

/// One call: `add a b` on a fresh connection to `addr` (`tcp@host:port`, as
/// registered), the sum it answers.
fn call(addr: &str, a: i64, b: i64) -> Result<i64, Box<dyn Error>> {
    let target: SocketAddr = addr
        .strip_prefix("tcp@")
        .ok_or_else(|| format!("{addr:?} is not a tcp@host:port address"))?
        .parse()
        .map_err(|e| format!("{addr:?}: {e}"))?;
    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    writeln!(&stream, "add {a} {b}").map_err(|e| format!("send to {addr}: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let answer = line.trim_end();
    answer
        .parse()
        .map_err(|_| format!("{addr} answered {answer:?}, not a number").into())
}

/// A server of one call, `add A B`, answered with the sum on one line; one
/// connection at a time, from its own named thread.
struct ArithServer {
    name: &'static str,
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ArithServer {
    /// Binds 127.0.0.1 on a free port and starts answering.
    fn start(name: &'static str) -> Result<ArithServer, Box<dyn Error>> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("{name}: bind: {e}"))?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (served.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(name, &listener, &s, &st))
            .map_err(|e| format!("{name}: spawn: {e}"))?;
        Ok(ArithServer {
            name,
            addr,
            served,
            stop,
            thread: Some(thread),
        })
    }

    /// The address to register, in the seed's `protocol@addr` form.
    fn announce(&self) -> String {
        format!("tcp@{}", self.addr)
    }

    /// Calls answered so far.
    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stops accepting and joins the thread.
    fn stop(mut self) -> Result<(), Box<dyn Error>> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), Box<dyn Error>> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::Release);
        // `accept` has no timeout: one connection of our own wakes it, and
        // the thread sees the flag before it reads anything.
        TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .map_err(|e| format!("{}: wake for stop: {e}", self.name))?;
        thread
            .join()
            .map_err(|_| format!("{}: its thread panicked", self.name).into())
    }
}

impl Drop for ArithServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("seed_demo: {e}");
        }
    }
}

/// The accept loop: until `stop` is set, answer each connection's one line.
fn serve(name: &str, listener: &TcpListener, served: &AtomicU64, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        // A bad connection costs at most its timeouts and ends only itself.
        if let Err(e) = conn.and_then(|stream| answer(&stream, served)) {
            eprintln!("{name}: {e}");
        }
    }
}

/// Reads one `add A B` line and writes the sum, or an `error: …` line.
/// A call is counted before its answer is written: counted after, the
/// client could hold the answer and read the count before it moved.
fn answer(stream: &TcpStream, served: &AtomicU64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reply = match words.as_slice() {
        ["add", a, b] => match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(a), Ok(b)) => a
                .checked_add(b)
                .map_or("error: overflow".into(), |s| s.to_string()),
            _ => "error: add takes two integers".into(),
        },
        _ => format!("error: unknown call {:?}; try `add 1 2`", line.trim_end()),
    };
    served.fetch_add(1, Ordering::SeqCst);
    let mut stream = stream;
    writeln!(stream, "{reply}")
}

/// The error and its causes joined by ": ", as the `regcenter` binary prints.
fn chain(e: &dyn Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}
