//! Hostile configuration: a setting that would switch auth off or lose the
//! table by accident is refused before anything starts (exit 2 from the
//! binary, an error from `start()` that leaves nothing behind), and a
//! sidecar whose registry stops accepting it says so and exits.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use regcenter::{Error, RegistryServer};

use crate::common::process::Process;
use crate::common::{raw, temp_dir, threads_named};

const P: &str = "/myRPC/registry";

/// Runs `regcenter ARGS` with `env`; its exit code and stderr.
fn exit_of(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut p = Process::spawn(args, env);
    let status = p.wait(Duration::from_secs(20));
    (status.code(), p.stderr())
}

#[test]
fn a_blank_token_in_the_environment_is_refused_like_an_empty_token_file() {
    let dir = temp_dir("blank-token");
    let empty = dir.join("empty");
    std::fs::write(&empty, " \n").unwrap();
    let missing = dir.join("missing");
    let (empty, missing) = (empty.to_str().unwrap(), missing.to_str().unwrap());
    let serve = ["serve", "--addr", "127.0.0.1:0"];
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vec<&str>, Env)> = vec![
        (serve.to_vec(), vec![("REGCENTER_TOKEN", "")]),
        (serve.to_vec(), vec![("REGCENTER_TOKEN", "  \t ")]),
        ([&serve[..], &["--token-file", empty]].concat(), vec![]),
        ([&serve[..], &["--token-file", missing]].concat(), vec![]),
        (
            vec!["list", "--registry", "http://127.0.0.1:1/myRPC/registry"],
            vec![("REGCENTER_TOKEN", "")],
        ),
        (
            vec![
                "register",
                "--registry",
                "http://127.0.0.1:1/myRPC/registry",
                "--addr",
                "tcp@a:1",
            ],
            vec![("REGCENTER_TOKEN", " ")],
        ),
    ];
    for (args, env) in cases {
        let (code, err) = exit_of(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {err}");
        assert!(!err.contains("serving"), "{args:?} {env:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("regcenter: ") && last.to_lowercase().contains("token"),
            "{args:?} {env:?}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unusable_snapshot_paths_are_refused_before_the_server_starts() {
    let dir = temp_dir("snap-paths");
    let no_dir = dir.join("no-such-dir").join("table");
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let under_file = a_file.join("table");
    for path in [&no_dir, &dir, &under_file] {
        let (code, err) = exit_of(
            &[
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--snapshot",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, Some(2), "{}: {err}", path.display());
        assert!(!err.contains("serving"), "{err}");
        assert!(
            err.lines().last().unwrap().contains("snapshot"),
            "names the setting: {err}"
        );
    }
    assert!(!no_dir.parent().unwrap().exists(), "nothing created");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "nothing created"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .token("s3cret")
        .start()
        .unwrap();
    let post = |auth: &str| {
        raw(
            s.local_addr(),
            "POST",
            P,
            &[("X-Myrpc-Server", "tcp@a:1"), ("Authorization", auth)],
        )
        .status
    };
    for refused in [
        "Basic s3cret",
        "Bearers3cret",
        "bearer wrong!",
        "s3cret",
        "Bearer",
    ] {
        assert_eq!(post(refused), 401, "{refused:?}");
    }
    assert!(s.registry().is_empty());
    for accepted in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        assert_eq!(post(accepted), 200, "{accepted:?}");
    }
    s.shutdown().unwrap();
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_refused_start_leaves_no_thread_no_port_and_no_write() {
    let dir = temp_dir("refused-start");
    let file = dir.join("table");
    // A valid snapshot, as an earlier run left it.
    let text = "regcenter-snapshot 1\ncounter 7\nwritten 1000\nsvc\ttcp@kept:1\t1\t0\t-\t\nend 1\n";
    std::fs::write(&file, text).unwrap();
    type Case = (
        &'static str,
        fn(regcenter::RegistryServerBuilder) -> regcenter::RegistryServerBuilder,
    );
    let cases: [Case; 6] = [
        ("an empty token", |b| b.token("")),
        ("a token with a space", |b| b.token("two words")),
        ("a token with a line break", |b| b.token("x\r\nX-Evil: 1")),
        ("protected reads without a token", |b| b.protect_reads(true)),
        ("zero max connections", |b| b.max_connections(0)),
        ("a zero snapshot interval", |b| {
            b.snapshot_interval(Duration::ZERO)
        }),
    ];
    for (what, bad) in cases {
        let port = super::free_port();
        let b = RegistryServer::builder()
            .addr(format!("127.0.0.1:{port}"))
            .threads(2)
            .snapshot(&file);
        match bad(b).start() {
            Err(Error::InvalidConfig { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            threads_named(&format!("rc{port}-")),
            0,
            "{what}: threads left"
        );
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("{what}: port {port} still held: {e}"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text, "{what}");
        assert_eq!(files_in(&dir), ["table"], "{what}");
    }
    // Unusable snapshot paths, from the library.
    for path in [
        dir.join("no-dir").join("table"),
        dir.clone(),
        file.join("x"),
    ] {
        let port = super::free_port();
        let r = RegistryServer::builder()
            .addr(format!("127.0.0.1:{port}"))
            .threads(2)
            .snapshot(&path)
            .start();
        assert!(
            matches!(
                r,
                Err(Error::InvalidConfig {
                    setting: "snapshot",
                    ..
                })
            ),
            "{}: {r:?}",
            path.display()
        );
        assert_eq!(threads_named(&format!("rc{port}-")), 0);
        assert_eq!(files_in(&dir), ["table"]);
    }
    // And the same file then loads.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .snapshot(&file)
        .start()
        .unwrap();
    assert_eq!(s.registry().alive("svc"), ["tcp@kept:1"]);
    s.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A registry stand-in that accepts the first `accept` beats and answers
/// 401 to every request after them, as a registry whose token was rotated.
struct Rotating {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Rotating {
    fn start(accept: usize) -> Rotating {
        let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = http.server_addr().to_ip().unwrap();
        let seen = AtomicUsize::new(0);
        let h = http.clone();
        let worker = std::thread::Builder::new()
            .name("test-rotating".into())
            .spawn(move || {
                while let Ok(rq) = h.recv() {
                    let resp = if seen.fetch_add(1, Ordering::Relaxed) < accept {
                        tiny_http::Response::from_string("").with_header(
                            tiny_http::Header::from_bytes("X-Myrpc-Ttl", "1s").unwrap(),
                        )
                    } else {
                        tiny_http::Response::from_string("the bearer token is wrong")
                            .with_status_code(401)
                    };
                    let _ = rq.respond(resp);
                }
            })
            .unwrap();
        Rotating {
            addr,
            http,
            worker: Some(worker),
        }
    }
}

impl Drop for Rotating {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[test]
fn a_sidecar_whose_token_is_refused_exits_1_and_says_why() {
    let registry = Rotating::start(2);
    let dir = temp_dir("rotated");
    let token = dir.join("token");
    std::fs::write(&token, "old-token\n").unwrap();
    let url = format!("http://{}{P}", registry.addr);
    let mut p = Process::spawn(
        &[
            "register",
            "--registry",
            &url,
            "--addr",
            "tcp@side:1",
            "--period",
            "100ms",
            "--token-file",
            token.to_str().unwrap(),
        ],
        &[],
    );
    p.line_containing("keeping tcp@side:1 registered", Duration::from_secs(20));
    let status = p.wait(Duration::from_secs(30));
    let err = p.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("regcenter: ") && last.contains("401") && last.contains("tcp@side:1"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
