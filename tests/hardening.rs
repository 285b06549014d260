//! The server against tiny_http's known defects (CRATE-NOTES §0, §1.8).
//! Each test ends by checking that the same server still answers a normal
//! GET and POST.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use regcenter::{Clock, RegistryServer};

use crate::common::{raw, wait_until};

const P: &str = "/myRPC/registry";

/// The server still answers a normal GET and POST.
fn still_serves(addr: SocketAddr) {
    let r = raw(addr, "POST", P, &[("X-Myrpc-Server", "tcp@still:1")]);
    assert_eq!(r.status, 200, "POST after the attack");
    let r = raw(addr, "GET", &format!("{P}?format=text"), &[]);
    assert_eq!(r.status, 200, "GET after the attack");
    assert!(r.text().contains("tcp@still:1"));
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Reads until EOF, an error or the read timeout; true when the server
/// closed the connection (EOF or reset) rather than leaving it silent.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Whether the server closed (or sent an unasked-for last answer on) a
/// connection on which the client has sent nothing, without waiting.
fn closed_now(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let closed = match s.peek(&mut b) {
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        Ok(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn a_burst_of_new_keep_alive_connections_is_answered() {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = server.local_addr();
    const CLIENTS: usize = 256;
    for round in 0..3 {
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let release = Arc::new(Barrier::new(CLIENTS + 1));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (barrier, release) = (barrier.clone(), release.clone());
                thread::spawn(move || {
                    let mut s = connect(addr);
                    barrier.wait();
                    let sent = Instant::now();
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                        .unwrap();
                    let mut buf = [0u8; 256];
                    let answered = match s.read(&mut buf) {
                        Ok(n) if n > 0 => Some(sent.elapsed()),
                        _ => None,
                    };
                    // Keep the connection open until every client is done:
                    // a starved connection is freed only by another closing.
                    release.wait();
                    answered
                })
            })
            .collect();
        release.wait();
        let latencies: Vec<Option<Duration>> =
            clients.into_iter().map(|c| c.join().unwrap()).collect();
        let unanswered = latencies.iter().filter(|l| l.is_none()).count();
        // How fast is for the benches; here every one must be answered,
        // where a starved connection would wait until another closes.
        assert_eq!(
            unanswered, 0,
            "round {round}: {unanswered} of {CLIENTS} got no answer in 3 s"
        );
    }
    still_serves(addr);
}

#[test]
fn unread_request_bodies_neither_abort_the_process_nor_block_a_worker() {
    // One worker: if it blocked on a body, nothing else would be answered.
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(1)
        .start()
        .unwrap();
    let addr = server.local_addr();
    let mut huge = connect(addr);
    huge.write_all(
        b"POST /myRPC/registry HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: a\r\nContent-Length: 1000000000000000\r\n\r\n",
    )
    .unwrap();
    let mut short = connect(addr);
    short
        .write_all(
            b"POST /myRPC/registry HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: b\r\nContent-Length: 2000\r\n\r\n0123456789",
        )
        .unwrap();
    // Both are answered (413) or dropped, without waiting for the body.
    for (name, s) in [("huge", &mut huge), ("short", &mut short)] {
        let mut buf = Vec::new();
        let t = Instant::now();
        let _ = s.read_to_end(&mut buf);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name}: the connection was left open"
        );
        let head = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || head.starts_with("HTTP/1.1 413"),
            "{name}: {head}"
        );
    }
    // Other clients are served meanwhile, by the one worker.
    let t = Instant::now();
    still_serves(addr);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        server
            .registry()
            .alive("")
            .iter()
            .all(|a| a != "a" && a != "b")
    );
}

#[test]
fn accept_errors_do_not_kill_the_port() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcenter"));
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--threads", "2"])
        .env("REGCENTER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildGuard(cmd.spawn().expect("start regcenter"));
    let stderr = child.0.stderr.take().unwrap();
    let (addr, log) = read_serving_addr(stderr);

    // Far more connections than 64 descriptors allow: accept fails (EMFILE).
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..80 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            conns.push(s);
        }
    }
    wait_until(
        "the accept error to be logged",
        Duration::from_secs(5),
        || log.lock().iter().any(|l| l.contains("accept")),
    );
    drop(conns);
    // Descriptors are free again: the same port answers.
    wait_until(
        "the registry to answer again",
        Duration::from_secs(10),
        || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok_and(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .is_ok()
                    && {
                        let mut buf = Vec::new();
                        let _ = s.read_to_end(&mut buf);
                        buf.starts_with(b"HTTP/1.1 200")
                    }
            })
        },
    );
    still_serves(addr);
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's log until it names its URL; keeps collecting lines.
fn read_serving_addr(
    stderr: std::process::ChildStderr,
) -> (SocketAddr, Arc<parking_lot::Mutex<Vec<String>>>) {
    use std::io::BufRead;
    let log: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("serving http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
            }
            lines.lock().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the registry names its address");
    (addr.parse().unwrap(), log)
}

#[test]
fn idle_and_slow_clients_are_closed_and_connections_capped() {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .idle_timeout(Duration::from_millis(300))
        .header_timeout(Duration::from_millis(300))
        .max_connections(20)
        .start()
        .unwrap();
    let addr = server.local_addr();

    // Silent from the start.
    let mut silent = connect(addr);
    // Idle after one request on a kept-alive connection.
    let mut idle = connect(addr);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    let t = Instant::now();
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stayed open"
    );
    assert!(
        closed_by_server(&mut idle),
        "an idle keep-alive connection stayed open"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A slow sender, one byte every 50 ms, never finishes its header.
    let mut slow = connect(addr);
    let started = Instant::now();
    let mut cut = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: a-very-slow-client.example\r\nX-Pad: "
        .iter()
        .cycle()
    {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cut || closed_by_server(&mut slow),
        "a slow sender was not cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // More connections than allowed: the excess is closed; others served.
    let many: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    wait_until(
        "the excess connections to be closed",
        Duration::from_secs(3),
        || many.iter().filter(|s| closed_now(s)).count() >= 20,
    );
    drop(many);
    still_serves(addr);
}

#[test]
fn oversized_and_non_ascii_headers_are_refused() {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = server.local_addr();

    // A complete head of 100 KiB: refused with 431 (or 400).
    let big = "a".repeat(100 * 1024);
    let r = raw(addr, "GET", P, &[("X-Big", &big)]);
    assert!(matches!(r.status, 431 | 400), "{}", r.status);

    // A header line that never ends: cut off with a 431 long before 64 MiB
    // arrive. The server stops reading, so the writer's buffers fill up and
    // the write times out; the answer is waiting to be read.
    let mut s = connect(addr);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        .unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 << 20 && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 64 << 20, "the server read 64 MiB of one header line");
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap_or(0);
    assert!(
        head[..n].starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    // A non-ASCII header: the connection is answered 400 or closed.
    let mut s = connect(addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Name: caf\xc3\xa9\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    still_serves(addr);
}

/// A clock that panics on request threads while `armed`.
#[derive(Clone, Default)]
struct PanickingClock(Arc<AtomicBool>);

impl Clock for PanickingClock {
    fn now(&self) -> Instant {
        let on_request_thread = thread::current()
            .name()
            .is_some_and(|n| n.contains("-http"));
        if on_request_thread && self.0.load(Ordering::SeqCst) {
            panic!("clock failure injected by the test");
        }
        Instant::now()
    }
}

#[test]
fn a_panic_in_a_route_answers_500_and_the_worker_lives() {
    let clock = PanickingClock::default();
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(1)
        .clock(clock.clone())
        .start()
        .unwrap();
    let addr = server.local_addr();
    clock.0.store(true, Ordering::SeqCst);
    let r = raw(addr, "GET", P, &[]);
    assert_eq!(r.status, 500);
    assert!(!r.text().is_empty(), "the 500 carries a reason");
    clock.0.store(false, Ordering::SeqCst);
    still_serves(addr); // the only worker is still there
}

#[test]
fn shutdown_leaves_no_kept_alive_client_hanging() {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = server.local_addr();
    let mut c = connect(addr);
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    server.shutdown().unwrap();
    // The kept-alive connection sees the close, not silence until 3 s.
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed_by_server(&mut c));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn idle_and_slow_drip_crowds_do_not_starve_a_normal_client() {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .start()
        .unwrap();
    let addr = server.local_addr();
    // 500 idle connections, each holding a tiny_http thread.
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(addr)).collect();
    // 20 clients dripping a request head one byte every 50 ms, for 2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let drips: Vec<_> = (0..20)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = connect(addr);
                let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
                for b in head.iter().chain(std::iter::repeat(&b'a')).take(40) {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(50)); // the attack's own pace
                }
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = raw(addr, "GET", &format!("{P}?format=text"), &[]);
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for d in drips {
        d.join().unwrap();
    }
    drop(idle);
    // Starved, it would wait for an idle timeout; how fast is for benches.
    assert!(
        worst < Duration::from_secs(5),
        "slowest normal answer {worst:?}"
    );
    still_serves(addr);
}
