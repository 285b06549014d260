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
