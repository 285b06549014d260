//! Front-ends on etcd (`serve --etcd`): how fast a registration at one
//! front-end wakes a long-poll at another, and how much etcd's revision
//! moves while 1 000 servers renew 10 times a second.
//!
//! `cargo bench --features etcd --bench frontends` (about 15 s; needs
//! Debian's etcd-server); `REGCENTER_BENCH_LONG=1` renews for 30 s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use regcenter::RegistryServer;

fn main() {
    let Some(etcd) = Etcd::start() else {
        println!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
        return;
    };
    let long = std::env::var_os("REGCENTER_BENCH_LONG").is_some();
    let a = front(&etcd.url);
    let b = front(&etcd.url);
    propagation(&a, &b, 300);
    renewals(
        &etcd,
        &a,
        &b,
        1000,
        Duration::from_secs(if long { 30 } else { 10 }),
    );
    a.shutdown().expect("stop");
    b.shutdown().expect("stop");
}

fn front(etcd: &str) -> RegistryServer {
    RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_secs(60))
        .threads(2)
        .etcd(&[etcd])
        .start()
        .expect("start a front-end")
}

/// A keep-alive connection that sends one request and reads its answer.
struct Conn(TcpStream, Vec<u8>);

impl Conn {
    fn to(at: SocketAddr) -> Conn {
        let s = TcpStream::connect(at).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        Conn(s, vec![0; 64 * 1024])
    }

    /// The status and `X-Myrpc-Index` of the answer (bodies here are
    /// short and come in the same read as the head).
    fn call(&mut self, req: &str) -> (u16, u64) {
        self.0.write_all(req.as_bytes()).expect("send");
        let n = self.0.read(&mut self.1).expect("answer");
        let head = String::from_utf8_lossy(&self.1[..n]);
        let status = head[9..12].parse().expect("a status");
        let index = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Myrpc-Index: "))
            .map_or(0, |i| i.trim().parse().expect("an index"));
        (status, index)
    }
}

fn post(addr: &str) -> String {
    format!(
        "POST /myRPC/registry/bench HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// POST a new address to `a` while a long-poll waits at `b`: the time
/// until `b` answers it.
fn propagation(a: &RegistryServer, b: &RegistryServer, rounds: usize) {
    let mut writer = Conn::to(a.local_addr());
    let mut took = Vec::with_capacity(rounds);
    let (_, mut index) = Conn::to(b.local_addr())
        .call("GET /myRPC/registry/bench?format=text HTTP/1.1\r\nHost: x\r\n\r\n");
    let at_b = b.local_addr();
    for i in 0..rounds {
        let poll = thread::spawn(move || {
            let r = Conn::to(at_b).call(&format!(
                "GET /myRPC/registry/bench?format=text&index={index}&wait=10s HTTP/1.1\r\nHost: x\r\n\r\n"
            ));
            (Instant::now(), r)
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.parked() == 0 && Instant::now() < deadline {
            thread::yield_now();
        }
        let t = Instant::now();
        assert_eq!(
            writer
                .call(&post(&format!("tcp@127.0.0.1:{}", 20_000 + i)))
                .0,
            200
        );
        let (when, (status, new)) = poll.join().expect("poll");
        assert_eq!(status, 200);
        took.push(when.duration_since(t));
        index = new;
    }
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    println!(
        "registration at one front-end to long-poll answered at another ({rounds} rounds): \
         p50 {:?}  p99 {:?}  max {:?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// `servers` servers renewing 10 times a second for `dur`, half through
/// each front-end: the renewals sent and how far etcd's revision moved.
fn renewals(etcd: &Etcd, a: &RegistryServer, b: &RegistryServer, servers: usize, dur: Duration) {
    let addrs: Vec<String> = (0..servers)
        .map(|i| format!("tcp@127.0.0.1:{}", 30_000 + i))
        .collect();
    let mut c = Conn::to(a.local_addr());
    for s in &addrs {
        assert_eq!(c.call(&post(s)).0, 200);
    }
    let before = etcd.revision();
    let started = Instant::now();
    let threads: Vec<_> = addrs
        .chunks(servers / 4)
        .enumerate()
        .map(|(k, chunk)| {
            let at = if k % 2 == 0 {
                a.local_addr()
            } else {
                b.local_addr()
            };
            let chunk = chunk.to_vec();
            thread::spawn(move || {
                let mut c = Conn::to(at);
                let mut sent = 0u64;
                let mut tick = Instant::now();
                while started.elapsed() < dur {
                    for s in &chunk {
                        assert_eq!(c.call(&post(s)).0, 200);
                        sent += 1;
                    }
                    tick += Duration::from_millis(100);
                    thread::sleep(tick.saturating_duration_since(Instant::now()));
                }
                sent
            })
        })
        .collect();
    // After the first round every front-end has claimed what it hears.
    thread::sleep(Duration::from_secs(2));
    let settled = etcd.revision();
    let sent: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("renewer"))
        .sum();
    let end = etcd.revision();
    println!(
        "{servers} servers renewing 10/s for {dur:?} (half through each front-end): \
         {sent} renewals, {:.0}/s; etcd's revision moved by {} in all: {} in the first 2 s \
         (the one claim each of the {} servers that B heard first), {} after",
        sent as f64 / started.elapsed().as_secs_f64(),
        end - before,
        settled - before,
        servers / 2,
        end - settled
    );
}

/// One etcd member on free loopback ports, killed (by its PID) on drop.
struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    url: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    fn start() -> Option<Etcd> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let (c, p) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("regcenter-bench-etcd-{}", std::process::id()));
        let url = format!("http://127.0.0.1:{c}");
        let peer = format!("http://127.0.0.1:{p}");
        let child = Command::new(bin)
            .args(["--name", "b", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("b={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let e = Etcd { child, dir, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.try_revision().is_none() {
            assert!(Instant::now() < deadline, "etcd did not start");
            thread::sleep(Duration::from_millis(50));
        }
        Some(e)
    }

    fn try_revision(&self) -> Option<u64> {
        let t = Some(Duration::from_secs(2));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(t)
            .proxy(None)
            .build()
            .into();
        let text = agent
            .post(&format!("{}/v3/kv/range", self.url))
            .send(r#"{"key":"AA==","count_only":true}"#)
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["header"]["revision"].as_str()?.parse().ok()
    }

    fn revision(&self) -> u64 {
        self.try_revision().expect("etcd answers")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this bench started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
