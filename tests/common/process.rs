//! The `regcenter` binary run by a test: once to its end, or as a process
//! whose stderr is read line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `regcenter ARGS` with `REGCENTER_LOG=warn`, once it has ended.
pub fn regcenter(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args(args)
        .env("REGCENTER_LOG", "warn")
        .output()
        .expect("run regcenter")
}

/// A `regcenter` process started by a test, its stderr read line by line.
/// Dropping it kills the process (by its PID) if it still runs, and reaps it.
pub struct Process {
    child: Child,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// Every line read so far, for failure messages and for `stderr`.
    seen: Vec<String>,
}

impl Process {
    /// Runs `regcenter ARGS` with `REGCENTER_LOG=info` and `env` (which may
    /// set another `REGCENTER_LOG`).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
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
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
    pub fn serve(args: &[&str]) -> (Process, SocketAddr) {
        Process::serve_env(args, &[])
    }

    /// `regcenter serve --addr 127.0.0.1:0 ARGS` with `env`, once it serves.
    pub fn serve_env(args: &[&str], env: &[(&str, &str)]) -> (Process, SocketAddr) {
        let mut all = vec!["serve", "--addr", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut p = Process::spawn(&all, env);
        let line = p.line_containing("serving http://", Duration::from_secs(20));
        let addr = line
            .split("serving http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (p, addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to this process (by its PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child this test started, by its PID; the
        // child is not reaped before `wait`, so the PID is still its own.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill {sig}");
    }

    /// The next stderr line containing `text`, within `within`.
    pub fn line_containing(&mut self, text: &str, within: Duration) -> String {
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
                        "no line with {text:?} within {within:?}; seen: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "regcenter ended ({:?}) before a line with {text:?}; seen: {:#?}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to end, within `within`; kills it and panics
    /// if it does not.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "regcenter still ran after {within:?}; seen: {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything it wrote to stderr, once it has ended.
    pub fn stderr(&mut self) -> String {
        self.all_lines().join("\n")
    }

    /// Waits for the process to end, within `within` (kills it and panics
    /// if it does not); its exit code and every line of its stderr.
    pub fn finish(&mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let status = self.wait(within);
        (status.code(), self.all_lines().to_vec())
    }

    /// Every line of its stderr, once it has ended: the reader is joined
    /// first, so none is still on its way.
    fn all_lines(&mut self) -> &[String] {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.seen.extend(self.lines.try_iter());
        &self.seen
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
