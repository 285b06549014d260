//! A registry stand-in whose JSON listing each test writes by hand: what a
//! registry of protocol v1.1 answers (status, recovery, filters), and what
//! an older one answers, without depending on the server's own code.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// What GET answers: the JSON body, `X-Myrpc-Index`, and extra headers.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub index: u64,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
struct Shared {
    answer: Mutex<Answer>,
    changed: Condvar,
    requests: Mutex<Vec<String>>,
}

/// Answers every GET with the current [`Answer`]; a long-poll
/// (`index=N`, N at or above the current index) waits for
/// [`set`](JsonRegistry::set) or its `wait`, at most 2 s, as a registry
/// parks it.
pub struct JsonRegistry {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    http: Arc<tiny_http::Server>,
    worker: Option<JoinHandle<()>>,
}

impl JsonRegistry {
    pub fn start(first: Answer) -> JsonRegistry {
        let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = http.server_addr().to_ip().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.answer.lock() = first;
        let (h, s) = (http.clone(), shared.clone());
        let worker = thread::Builder::new()
            .name("test-json-registry".into())
            .spawn(move || {
                while let Ok(rq) = h.recv() {
                    let url = rq.url().to_string();
                    s.requests.lock().push(url.clone());
                    let answer = answer_for(&s, &url);
                    let mut resp = tiny_http::Response::from_string(answer.body)
                        .with_header(
                            tiny_http::Header::from_bytes(
                                "X-Myrpc-Index",
                                answer.index.to_string(),
                            )
                            .unwrap(),
                        )
                        .with_header(
                            tiny_http::Header::from_bytes("Content-Type", "application/json")
                                .unwrap(),
                        );
                    for (n, v) in answer.headers {
                        resp = resp.with_header(tiny_http::Header::from_bytes(n, v).unwrap());
                    }
                    let _ = rq.respond(resp);
                }
            })
            .unwrap();
        JsonRegistry {
            addr,
            shared,
            http,
            worker: Some(worker),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/myRPC/registry", self.addr)
    }

    /// Replaces the answer and wakes parked long-polls.
    pub fn set(&self, answer: Answer) {
        *self.shared.answer.lock() = answer;
        self.shared.changed.notify_all();
    }

    /// The request targets received so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().clone()
    }
}

fn answer_for(s: &Shared, url: &str) -> Answer {
    let param = |name: &str| {
        url.split(['?', '&'])
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    let index: Option<u64> = param("index").and_then(|i| i.parse().ok());
    let wait = param("wait")
        .and_then(|w| w.strip_suffix("ms")?.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis)
        .min(Duration::from_secs(2));
    let deadline = Instant::now() + wait;
    let mut a = s.answer.lock();
    if let Some(index) = index {
        while a.index <= index {
            if s.changed.wait_until(&mut a, deadline).timed_out() {
                break;
            }
        }
    }
    a.clone()
}

impl Drop for JsonRegistry {
    fn drop(&mut self) {
        self.http.unblock();
        self.shared.changed.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// A JSON listing of `servers` (each a JSON object's text) at `index`.
pub fn listing(index: u64, servers: &[&str]) -> Answer {
    Answer {
        index,
        body: format!(
            "{{\"service\":\"\",\"index\":{index},\"servers\":[{}]}}\n",
            servers.join(",")
        ),
        headers: Vec::new(),
    }
}

/// `listing`, from a registry that says it is recovering (the header).
pub fn recovering(index: u64, servers: &[&str]) -> Answer {
    let mut a = listing(index, servers);
    a.headers.push(("X-Myrpc-Recovering".into(), "true".into()));
    a
}

/// A server entry as an older registry writes it: no status.
pub fn up(addr: &str) -> String {
    format!("{{\"addr\":\"{addr}\",\"weight\":1,\"meta\":{{}},\"expires_in_ms\":5000}}")
}
