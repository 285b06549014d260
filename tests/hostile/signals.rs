//! Hostile signals: whatever an operator, a supervisor or a stray script
//! sends, the registry either shuts down gracefully with its final
//! snapshot or carries on; no signal that can be caught ends it abruptly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{raw, wait_until};

const P: &str = "/myRPC/registry";

/// A `regcenter` process started by a test, its stderr read line by line.
/// Dropping it kills the process (by its PID) if it still runs, and reaps it.
pub(super) struct Process {
    child: Child,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Process {
    /// Runs `regcenter ARGS` with `REGCENTER_LOG=info` and `env`.
    pub(super) fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_regcenter"));
        cmd.args(args)
            .env("REGCENTER_LOG", "info")
            .env_remove("REGCENTER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run regcenter");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("test-stderr".into())
            .spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .unwrap();
        Process {
            child,
            lines,
            reader: Some(reader),
            seen: Vec::new(),
        }
    }

    /// `regcenter serve --addr 127.0.0.1:0 ARGS`, once it serves.
    pub(super) fn serve(args: &[&str]) -> (Process, SocketAddr) {
        let mut all = vec!["serve", "--addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut p = Process::spawn(&all, &[]);
        let line = p.line_containing("serving http://", Duration::from_secs(20));
        let addr = line
            .split("serving http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (p, addr)
    }

    pub(super) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to this process (by its PID).
    pub(super) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child this test started, by its PID; the
        // child is not reaped before `wait`, so the PID is still its own.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill {sig}");
    }

    /// The next stderr line containing `text`, within `within`.
    pub(super) fn line_containing(&mut self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {text:?} within {within:?}; seen: {:?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "regcenter ended ({:?}) before a line with {text:?}; seen: {:?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Whether the process still runs.
    pub(super) fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to end, within `within`; kills it and panics
    /// if it does not.
    pub(super) fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "regcenter still ran after {within:?}; seen: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything it wrote to stderr, once it has ended.
    pub(super) fn stderr(&mut self) -> String {
        let reader = self.reader.take();
        if let Some(r) = reader {
            r.join().unwrap();
        }
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A fresh directory for one test.
pub(super) fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("regcenter-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Registers `addr` for an hour; the registry's index after it.
pub(super) fn register(at: SocketAddr, addr: &str) -> u64 {
    let r = raw(
        at,
        "POST",
        P,
        &[("X-Myrpc-Server", addr), ("X-Myrpc-Ttl", "1h")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("X-Myrpc-Index").unwrap().parse().unwrap()
}

fn snapshot_text(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn assert_serves(at: SocketAddr) {
    assert_eq!(raw(at, "GET", "/healthz", &[]).status, 200);
}

#[test]
fn hangup_and_quit_shut_down_gracefully_with_the_final_snapshot() {
    let dir = temp_dir("sighup");
    for (sig, name) in [
        (libc::SIGHUP, "hup"),
        (libc::SIGQUIT, "quit"),
        (libc::SIGTERM, "term"),
        (libc::SIGINT, "int"),
    ] {
        let file = dir.join(name);
        // An hour between writes: only the final snapshot can hold the entry.
        let (mut p, at) = Process::serve(&[
            "--snapshot",
            file.to_str().unwrap(),
            "--snapshot-interval",
            "1h",
        ]);
        register(at, &format!("tcp@{name}:1"));
        p.signal(sig);
        let status = p.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{name}: {status:?}\n{}", p.stderr());
        let text = snapshot_text(&file);
        assert!(text.contains(&format!("tcp@{name}:1")), "{name}: {text}");
        assert!(
            text.contains("\nclean yes\n"),
            "{name}: marked clean: {text}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn user1_writes_the_snapshot_at_once_and_the_registry_carries_on() {
    let dir = temp_dir("sigusr1");
    let file = dir.join("table");
    let (mut p, at) = Process::serve(&[
        "--snapshot",
        file.to_str().unwrap(),
        "--snapshot-interval",
        "1h",
    ]);
    register(at, "tcp@first:1");
    p.signal(libc::SIGUSR1);
    p.line_containing("snapshot written", Duration::from_secs(20));
    let text = snapshot_text(&file);
    assert!(text.contains("tcp@first:1"), "{text}");
    assert!(
        text.contains("\nclean no\n"),
        "written while running: {text}"
    );
    assert!(p.running());
    assert_serves(at);
    register(at, "tcp@second:1");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    let text = snapshot_text(&file);
    assert!(text.contains("tcp@second:1"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_fatal_signals_are_logged_and_ignored() {
    let dir = temp_dir("sigother");
    let file = dir.join("table");
    let (mut p, at) = Process::serve(&[
        "--snapshot",
        file.to_str().unwrap(),
        "--snapshot-interval",
        "1h",
    ]);
    register(at, "tcp@a:1");
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    for sig in [
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSTKFLT,
        rtmin,
        rtmin + 1,
        rtmax,
    ] {
        p.signal(sig);
        let line = p.line_containing("ignored", Duration::from_secs(20));
        assert!(line.contains(&format!("signal {sig} ")), "{sig}: {line}");
        assert!(p.running(), "signal {sig} ended the registry");
        assert_serves(at);
    }
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0));
    assert!(snapshot_text(&file).contains("tcp@a:1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sidecar_that_is_hung_up_deregisters_and_exits_0() {
    let s = regcenter::RegistryServer::start_local().unwrap();
    for sig in [libc::SIGHUP, libc::SIGQUIT] {
        let mut p = Process::spawn(
            &["register", "--registry", s.url(), "--addr", "tcp@side:1"],
            &[],
        );
        p.line_containing("keeping tcp@side:1 registered", Duration::from_secs(20));
        assert_eq!(s.registry().alive(""), ["tcp@side:1"]);
        p.signal(libc::SIGUSR2);
        p.line_containing("ignored", Duration::from_secs(20));
        p.signal(sig);
        assert_eq!(p.wait(Duration::from_secs(20)).code(), Some(0), "{sig}");
        wait_until("the sidecar's DELETE", Duration::from_secs(5), || {
            s.registry().alive("").is_empty()
        });
    }
}
