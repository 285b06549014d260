//! etcd processes for the tests: one member, or a cluster of several, of
//! Debian's `etcd-server` on free loopback ports, each with its own data
//! directory, stopped by PID and removed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::wait_until;

/// A client for the test's own calls to etcd, bounded in time.
pub fn agent() -> ureq::Agent {
    let t = Some(Duration::from_secs(2));
    ureq::Agent::config_builder()
        .timeout_connect(t)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd's binary, or `None` (and a SKIPPED line) when it is not installed
/// outside CI; under CI its absence fails the test.
pub fn etcd_binary() -> Option<&'static str> {
    let found = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is missing under CI: .ci/run installs it (apt-get install -y etcd-server)"
        );
        eprintln!(
            "SKIPPED: etcd is not installed (apt-get install etcd-server); the etcd tests did not run"
        );
    }
    found
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// One POST to etcd's gateway at `url`; the answer's JSON, whatever its
/// status, or `None` when the member does not answer.
pub fn call(url: &str, path: &str, body: &Value) -> Option<Value> {
    let mut r = agent()
        .post(&format!("{url}{path}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .ok()?;
    serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
}

/// One member of a [`Cluster`] (or the only one).
struct Member {
    name: String,
    child: Option<Child>,
    client: u16,
    peer: u16,
}

impl Member {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }
}

/// etcd members on loopback forming one cluster, started by [`start`]
/// (one member) or [`Cluster::start`] (several).
pub struct Cluster {
    dir: PathBuf,
    token: String,
    members: Vec<Member>,
}

/// An etcd of one member.
pub fn start() -> Option<Cluster> {
    Cluster::start(1)
}

impl Cluster {
    /// `n` members, healthy on return (a leader elected). Fast elections
    /// (50 ms heartbeats, 500 ms election timeout) keep failover tests
    /// short; progress notifications every second let watchers tell a
    /// quiet stream from a dead one.
    pub fn start(n: usize) -> Option<Cluster> {
        etcd_binary()?;
        let id = format!("{}-{}", std::process::id(), free_port());
        let mut c = Cluster {
            dir: std::env::temp_dir().join(format!("regcenter-etcd-{id}")),
            token: format!("regcenter-test-{id}"),
            members: (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    child: None,
                    client: free_port(),
                    peer: free_port(),
                })
                .collect(),
        };
        for i in 0..n {
            c.launch(i);
        }
        c.wait_healthy();
        Some(c)
    }

    fn launch(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let m = &self.members[i];
        let child = Command::new(etcd_binary().expect("checked at start"))
            .args(["--name", &m.name, "--data-dir"])
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &m.url()])
            .args(["--advertise-client-urls", &m.url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--experimental-watch-progress-notify-interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Waits until every running member reports itself healthy.
    pub fn wait_healthy(&self) {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("{}/health", m.url());
            wait_until("etcd to be healthy", Duration::from_secs(30), || {
                agent()
                    .get(&url)
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .is_some_and(|b| b.contains("\"true\""))
            });
        }
    }

    /// The client URL of member `i`.
    pub fn member_url(&self, i: usize) -> String {
        self.members[i].url()
    }

    /// The client URL of the first member (of the only one).
    pub fn url(&self) -> String {
        self.member_url(0)
    }

    /// Every member's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(Member::url).collect()
    }

    /// Every member's client URL, comma-separated, as `--etcd` takes them.
    pub fn endpoints(&self) -> String {
        self.urls().join(",")
    }

    /// The PID of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<i32> {
        self.members[i].child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, i: usize, sig: i32) {
        let pid = self.pid(i).expect("the member runs");
        // SAFETY: kill(2) on a child this cluster started, by its PID.
        unsafe { libc::kill(pid, sig) };
    }

    /// Stops member `i` (SIGTERM; `kill`: SIGKILL) and waits for it.
    pub fn stop_member(&mut self, i: usize, kill: bool) {
        if let Some(mut c) = self.members[i].child.take() {
            let sig = if kill { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: kill(2) on a child this cluster started, by its PID.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its ports and data; `wipe`: with its
    /// data lost (only for a cluster of one).
    pub fn restart_member(&mut self, i: usize, wipe: bool) {
        self.stop_member(i, false);
        if wipe {
            assert_eq!(
                self.members.len(),
                1,
                "a member of a cluster cannot lose its data"
            );
            let _ = std::fs::remove_dir_all(self.dir.join(&self.members[i].name));
        }
        self.launch(i);
        self.wait_healthy();
    }

    /// Freezes member `i` (SIGSTOP) or lets it go on (SIGCONT).
    pub fn pause_member(&self, i: usize, paused: bool) {
        self.signal(i, if paused { libc::SIGSTOP } else { libc::SIGCONT });
    }

    /// Stops every member.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i, false);
        }
    }

    /// Restarts every member (a single member: `wipe` loses its data).
    pub fn restart(&mut self, wipe: bool) {
        self.stop();
        if wipe {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        for i in 0..self.members.len() {
            self.launch(i);
        }
        self.wait_healthy();
    }

    /// Which member leads, asked of the running members.
    pub fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Some(s) = call(&m.url(), "/v3/maintenance/status", &json!({})) else {
                continue;
            };
            let (Some(leader), Some(_)) = (s["leader"].as_str(), s["header"]["member_id"].as_str())
            else {
                continue;
            };
            for (j, other) in self.members.iter().enumerate() {
                if other.child.is_none() {
                    continue;
                }
                let st = call(&other.url(), "/v3/maintenance/status", &json!({}));
                if st.is_some_and(|st| st["header"]["member_id"].as_str() == Some(leader)) {
                    return Some(j);
                }
            }
        }
        None
    }

    /// The cluster's revision, asked of the first running member.
    pub fn revision(&self) -> u64 {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a member runs");
        let v = call(
            &m.url(),
            "/v3/kv/range",
            &json!({ "key": b64(b"\0"), "count_only": true }),
        )
        .expect("etcd answers");
        v["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: u64) {
        let v = call(
            &self.url(),
            "/v3/kv/compaction",
            &json!({ "revision": revision.to_string(), "physical": true }),
        )
        .expect("etcd answers");
        assert!(v.get("error").is_none(), "compaction failed: {v}");
    }

    /// The keys (and values) under `prefix`.
    pub fn range(&self, prefix: &str) -> Vec<(String, Value)> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let v = call(
            &self.url(),
            "/v3/kv/range",
            &json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&end) }),
        )
        .expect("etcd answers");
        v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                let key = String::from_utf8(unb64(kv["key"].as_str().unwrap())).unwrap();
                let value = kv["value"].as_str().map(unb64).unwrap_or_default();
                let value = serde_json::from_slice(&value).unwrap_or(Value::Null);
                (key, value)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            // A paused member does not die of SIGTERM until it runs again.
            if self.pid(i).is_some() {
                self.pause_member(i, false);
            }
            self.stop_member(i, true);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// The value of the gauge or counter `name` (without labels) on member
    /// `i`, or `None` when it does not answer.
    pub fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = agent()
            .get(&format!("{}/metrics", self.member_url(i)))
            .call()
            .ok()?
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The keys under `prefix` as member `i` alone holds them (a
    /// serializable read: no leader needed), or `None` when it does not
    /// answer within `within`.
    pub fn local_keys(&self, i: usize, prefix: &str, within: Duration) -> Option<Vec<String>> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("a prefix") += 1;
        let t = Some(within);
        let a: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
            .proxy(None)
            .build()
            .into();
        let body = json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&end),
                           "serializable": true, "keys_only": true });
        let text = a
            .post(&format!("{}/v3/kv/range", self.member_url(i)))
            .send(body.to_string())
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let mut keys: Vec<String> = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| String::from_utf8(unb64(kv["key"].as_str().unwrap())).unwrap())
            .collect();
        keys.sort();
        Some(keys)
    }

    /// The client address of member `i`.
    pub fn member_addr(&self, i: usize) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.members[i].client)
            .parse()
            .unwrap()
    }
}

/// A TCP proxy in front of one member that holds every new watch request
/// (a connection whose first request is `POST /v3/watch`) until it is
/// opened, and counts them: a watch can be made to start after the history
/// it asks for was compacted.
pub struct Gate {
    addr: std::net::SocketAddr,
    shared: std::sync::Arc<GateShared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

struct GateShared {
    upstream: std::net::SocketAddr,
    open: parking_lot::Mutex<bool>,
    opened: parking_lot::Condvar,
    watches: std::sync::atomic::AtomicUsize,
    held: std::sync::atomic::AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
    threads: parking_lot::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// How long a gate's connection may live, and a held request wait.
const GATE_LIFETIME: Duration = Duration::from_secs(60);
const GATE_TICK: Duration = Duration::from_millis(20);

impl Gate {
    /// A gate in front of `upstream`, closed.
    pub fn start(upstream: std::net::SocketAddr) -> Gate {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = std::sync::Arc::new(GateShared {
            upstream,
            open: parking_lot::Mutex::new(false),
            opened: parking_lot::Condvar::new(),
            watches: 0.into(),
            held: 0.into(),
            stop: false.into(),
            threads: parking_lot::Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("gate-accept".into())
            .spawn(move || {
                let until = std::time::Instant::now() + Duration::from_secs(600);
                while !s.stop.load(SeqCst) && std::time::Instant::now() < until {
                    match listener.accept() {
                        Ok((c, _)) => {
                            let s2 = s.clone();
                            let t = std::thread::Builder::new()
                                .name("gate-conn".into())
                                .spawn(move || gate_conn(&s2, c))
                                .unwrap();
                            s.threads.lock().push(t);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .unwrap();
        Gate {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The gate's URL, an etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets the held watch requests, and every later one, through.
    pub fn open(&self) {
        *self.shared.open.lock() = true;
        self.shared.opened.notify_all();
    }

    /// Watch requests seen so far.
    pub fn watches(&self) -> usize {
        self.shared
            .watches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Watch requests held now.
    pub fn held(&self) -> usize {
        self.shared.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.open();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let threads: Vec<_> = self.shared.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn gate_conn(s: &GateShared, client: std::net::TcpStream) {
    use std::io::Read;
    use std::sync::atomic::Ordering::SeqCst;
    let deadline = std::time::Instant::now() + GATE_LIFETIME;
    client.set_read_timeout(Some(GATE_TICK)).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if s.stop.load(SeqCst) || std::time::Instant::now() > deadline || head.len() > 65536 {
            return;
        }
        match (&client).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if is_idle(&e) => {}
            Err(_) => return,
        }
    }
    if head.starts_with(b"POST /v3/watch ") {
        s.watches.fetch_add(1, SeqCst);
        let mut open = s.open.lock();
        if !*open {
            s.held.fetch_add(1, SeqCst);
            let until = std::time::Instant::now() + GATE_LIFETIME;
            s.opened.wait_while_until(&mut open, |o| !*o, until);
            s.held.fetch_sub(1, SeqCst);
        }
    }
    let Ok(up) = std::net::TcpStream::connect_timeout(&s.upstream, Duration::from_secs(1)) else {
        return;
    };
    up.set_read_timeout(Some(GATE_TICK)).unwrap();
    let _ = std::io::Write::write_all(&mut &up, &head);
    let (c2, u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("gate-down".into())
            .spawn_scoped(scope, || gate_pump(s, &u2, &c2, deadline))
            .unwrap();
        gate_pump(s, &client, &up, deadline);
    });
}

fn is_idle(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn gate_pump(
    s: &GateShared,
    mut from: &std::net::TcpStream,
    mut to: &std::net::TcpStream,
    deadline: std::time::Instant,
) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 << 10];
    while !s.stop.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline
    {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if is_idle(&e) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// How a stand-in's open watch stream is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// An error object, as etcd's gateway sends when it shuts down, then
    /// the stream's last chunk.
    Error,
    /// The connection closed in the middle of the stream, without its last
    /// chunk (a gateway whose upstream went away).
    Close,
}

#[derive(Default)]
struct StandInState {
    version: String,
    addrs: Vec<String>,
    revision: u64,
    /// Requests as `METHOD /path`, with when they arrived.
    requests: Vec<(std::time::Instant, String)>,
    /// Watch streams open now.
    watching: usize,
    /// Bumped to end every open watch stream the way `end` says.
    end: (u64, Option<End>),
}

/// A stand-in for etcd's JSON gateway on loopback: `/version` answers the
/// version it is given, a lease is always granted and kept, a range lists
/// the addresses set, and a watch stream says it is created and then stays
/// silent until [`end_watches`](StandIn::end_watches) ends it.
pub struct StandIn {
    addr: std::net::SocketAddr,
    shared: std::sync::Arc<(parking_lot::Mutex<StandInState>, parking_lot::Condvar)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// A stand-in answering `/version` with `{"etcdserver": server,
    /// "etcdcluster": cluster}`.
    pub fn start(server: &str, cluster: &str) -> StandIn {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = std::sync::Arc::new((
            parking_lot::Mutex::new(StandInState {
                version: json!({ "etcdserver": server, "etcdcluster": cluster }).to_string(),
                revision: 1,
                ..StandInState::default()
            }),
            parking_lot::Condvar::new(),
        ));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        let acceptor = std::thread::Builder::new()
            .name("standin-accept".into())
            .spawn(move || {
                let mut conns = Vec::new();
                let until = std::time::Instant::now() + Duration::from_secs(600);
                while !st.load(SeqCst) && std::time::Instant::now() < until {
                    match listener.accept() {
                        Ok((c, _)) => {
                            let (s2, st2) = (s.clone(), st.clone());
                            conns.push(
                                std::thread::Builder::new()
                                    .name("standin-conn".into())
                                    .spawn(move || standin_conn(&s2, &st2, c))
                                    .unwrap(),
                            );
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                drop(s.0.lock());
                s.1.notify_all();
                for c in conns {
                    let _ = c.join();
                }
            })
            .unwrap();
        StandIn {
            addr,
            shared,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The stand-in's URL, an etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What ranges list from now on, at `revision`; watch streams are not
    /// told.
    pub fn set(&self, addrs: &[&str], revision: u64) {
        let mut st = self.shared.0.lock();
        st.addrs = addrs.iter().map(|a| a.to_string()).collect();
        st.revision = revision;
    }

    /// Ends every open watch stream the way `end` says.
    pub fn end_watches(&self, end: End) {
        let mut st = self.shared.0.lock();
        st.end = (st.end.0 + 1, Some(end));
        self.shared.1.notify_all();
    }

    /// Watch streams open now.
    pub fn watching(&self) -> usize {
        self.shared.0.lock().watching
    }

    /// The requests so far, `METHOD /path`, with when each arrived.
    pub fn requests(&self) -> Vec<(std::time::Instant, String)> {
        self.shared.0.lock().requests.clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Under the lock, so that no watch thread is between its check of
        // the stop flag and its wait.
        drop(self.shared.0.lock());
        self.shared.1.notify_all();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

type StandInShared = (parking_lot::Mutex<StandInState>, parking_lot::Condvar);

/// Serves the requests of one connection, in turn, until it closes.
fn standin_conn(
    s: &StandInShared,
    stop: &std::sync::atomic::AtomicBool,
    mut c: std::net::TcpStream,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::SeqCst;
    c.set_read_timeout(Some(GATE_TICK)).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    let deadline = std::time::Instant::now() + GATE_LIFETIME;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(SeqCst) && std::time::Instant::now() < deadline {
        // One request: its head, then a body of Content-Length bytes.
        let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match c.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_idle(&e) => {}
                Err(_) => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..at]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buf.len() < at + 4 + length {
            match c.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_idle(&e) => {}
                Err(_) => return,
            }
            continue;
        }
        buf.drain(..at + 4 + length);
        let line: Vec<&str> = head.lines().next().unwrap_or("").split(' ').collect();
        let what = format!("{} {}", line[0], line.get(1).unwrap_or(&""));
        let mut st = s.0.lock();
        st.requests.push((std::time::Instant::now(), what.clone()));
        let header =
            json!({ "cluster_id": "1", "member_id": "1", "revision": st.revision.to_string() });
        let body = match what.as_str() {
            "GET /version" => st.version.clone(),
            "POST /v3/lease/grant" => {
                json!({ "header": header, "ID": "7", "TTL": "5" }).to_string()
            }
            "POST /v3/lease/keepalive" => {
                json!({ "result": { "header": header, "ID": "7", "TTL": "5" } }).to_string()
            }
            "POST /v3/kv/range" => {
                let kvs: Vec<Value> = st
                    .addrs
                    .iter()
                    .map(|a| {
                        json!({ "key": b64(format!("/regcenter/{a}").as_bytes()),
                                "value": b64(json!({ "addr": a }).to_string().as_bytes()) })
                    })
                    .collect();
                json!({ "header": header, "kvs": kvs }).to_string()
            }
            "POST /v3/watch" => {
                let created = json!({ "result": { "header": header, "created": true } });
                let epoch = st.end.0;
                st.watching += 1;
                drop(st);
                let line = format!("{created}\n");
                let start = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{line}\r\n",
                    line.len()
                );
                let _ = c.write_all(start.as_bytes());
                let mut st = s.0.lock();
                let until = std::time::Instant::now() + GATE_LIFETIME;
                s.1.wait_while_until(&mut st, |st| st.end.0 == epoch && !stop.load(SeqCst), until);
                st.watching -= 1;
                if st.end.1 == Some(End::Error) && st.end.0 != epoch {
                    let e = json!({ "error": { "grpc_code": 14, "http_code": 503,
                        "message": "transport is closing", "http_status": "Service Unavailable" } });
                    let line = format!("{e}\n");
                    let _ =
                        c.write_all(format!("{:x}\r\n{line}\r\n0\r\n\r\n", line.len()).as_bytes());
                }
                let _ = c.shutdown(std::net::Shutdown::Both);
                return;
            }
            _ => json!({ "header": header }).to_string(),
        };
        drop(st);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if c.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
