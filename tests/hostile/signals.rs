//! Hostile signals: whatever an operator, a supervisor or a stray script
//! sends, the registry either shuts down gracefully with its final
//! snapshot or carries on; no signal that can be caught ends it abruptly.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::process::Process;
use crate::common::{raw, temp_dir, wait_until};

const P: &str = "/myRPC/registry";

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
