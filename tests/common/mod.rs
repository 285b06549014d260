//! Helpers: raw HTTP, waiting on conditions, thread counts, and a stand-in
//! for the GeeRPC seed's Go registry.

#![allow(dead_code)] // each test module uses a different subset

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod process;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Waits until `cond` holds, polling briefly; panics with `what` at the
/// deadline.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A registry on 127.0.0.1 whose entries outlive the test (a 60 s TTL), so
/// only what the test does changes what it lists.
pub fn lasting_registry() -> regcenter::RegistryServer {
    lasting_builder().start().unwrap()
}

/// The builder of [`lasting_registry`], for a test that sets more.
pub fn lasting_builder() -> regcenter::RegistryServerBuilder {
    regcenter::RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_secs(60))
        .threads(2)
}

/// A registry on `addr` with a 300 ms TTL, so heartbeats beat every 100 ms.
pub fn registry_on(addr: &str) -> regcenter::RegistryServer {
    regcenter::RegistryServer::builder()
        .addr(addr)
        .ttl(Duration::from_millis(300))
        .min_ttl(Duration::from_millis(50))
        .threads(2)
        .start()
        .unwrap()
}

/// A fresh, empty directory for one test, `regcenter-NAME-PID` in the
/// temporary directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("regcenter-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Registers `addr` with a one-minute TTL, so it cannot expire mid-test.
pub fn put_for_a_minute(reg: &regcenter::Registry, service: &str, addr: &str) {
    let opts = regcenter::PutOptions::new().ttl(Duration::from_secs(60));
    reg.put_with(service, addr, &opts)
        .expect("a valid registration");
}

/// Registers `addr` with `weight` and `meta` and a one-minute TTL, so it
/// cannot expire mid-test.
pub fn put_weighted(
    s: &regcenter::RegistryServer,
    service: &str,
    addr: &str,
    weight: u32,
    meta: &[(&str, &str)],
) {
    let mut opts = regcenter::PutOptions::new()
        .ttl(Duration::from_secs(60))
        .weight(weight);
    for (k, v) in meta {
        opts = opts.meta(*k, *v);
    }
    s.registry().put_with(service, addr, &opts).unwrap();
}

/// A response read off the wire.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body where it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

/// Sends one request (`Connection: close` is added) and reads the whole
/// answer, within 5 s.
pub fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_bytes(addr, req.as_bytes())
}

/// Sends raw bytes and parses the answer, within 5 s.
pub fn raw_bytes(addr: SocketAddr, bytes: &[u8]) -> Raw {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the answer");
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Raw {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Raw {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// Threads of this process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// `e` and its causes, joined by ": ", as the binary prints an error.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg
}

/// Headless Chromium, if it is installed; `None` where it is not, after
/// saying that the test `name` skipped. Under CI, which installs it, its
/// absence fails the test.
pub fn chromium(name: &str) -> Option<Chromium> {
    let Some(path) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing under CI: .ci/run installs it (apt-get install -y chromium)"
        );
        eprintln!("SKIPPED {name}: chromium is not installed (apt-get install chromium)");
        return None;
    };
    let profile =
        std::env::temp_dir().join(format!("regcenter-chromium-{name}-{}", std::process::id()));
    Some(Chromium { path, profile })
}

/// Headless Chromium with a profile directory of its own, removed on drop.
pub struct Chromium {
    path: &'static str,
    profile: std::path::PathBuf,
}

impl Chromium {
    /// Runs it headless on `url` with `args`, once it has ended.
    pub fn run(&self, args: &[&str], url: &str) -> std::process::Output {
        std::process::Command::new(self.path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--timeout=10000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .args(args)
            .arg(url)
            .output()
            .expect("run chromium")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A stand-in for the GeeRPC tutorial's Go registry: GET answers only the
/// `X-Myrpc-Servers` header (no index, empty body), POST registers from
/// `X-Myrpc-Server` (500 without it, as the seed), anything else is 405.
pub struct SeedRegistry {
    pub addr: SocketAddr,
    pub servers: Arc<Mutex<BTreeMap<String, Instant>>>,
    pub requests: Arc<Mutex<Vec<String>>>,
    http: Arc<tiny_http::Server>,
    worker: Option<JoinHandle<()>>,
}

impl SeedRegistry {
    pub fn start() -> SeedRegistry {
        let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = http.server_addr().to_ip().unwrap();
        let servers: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (h, s, r) = (http.clone(), servers.clone(), requests.clone());
        let worker = thread::spawn(move || {
            while let Ok(rq) = h.recv() {
                let method = rq.method().to_string();
                r.lock().push(format!("{method} {}", rq.url()));
                let header = |name: &'static str| {
                    rq.headers()
                        .iter()
                        .find(|h| h.field.equiv(name))
                        .map(|h| h.value.as_str().to_string())
                };
                let resp = match method.as_str() {
                    "GET" => {
                        let alive: Vec<String> = s.lock().keys().cloned().collect();
                        tiny_http::Response::empty(200).with_header(
                            tiny_http::Header::from_bytes("X-Myrpc-Servers", alive.join(","))
                                .unwrap(),
                        )
                    }
                    "POST" => match header("X-Myrpc-Server") {
                        Some(a) if !a.is_empty() => {
                            s.lock().insert(a, Instant::now());
                            tiny_http::Response::empty(200)
                        }
                        _ => tiny_http::Response::empty(500),
                    },
                    _ => tiny_http::Response::empty(405),
                };
                let _ = rq.respond(resp);
            }
        });
        SeedRegistry {
            addr,
            servers,
            requests,
            http,
            worker: Some(worker),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/myRPC/registry", self.addr)
    }
}

impl Drop for SeedRegistry {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
