//! The `regcenter` binary: usage errors, list/register/deregister, bench.

use std::process::{Command, Stdio};
use std::time::Duration;

use regcenter::RegistryServer;

use crate::common::wait_until;

fn regcenter(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args(args)
        .env("REGCENTER_LOG", "warn")
        .output()
        .expect("run regcenter")
}

#[test]
fn bad_flags_and_values_exit_2_with_one_line() {
    for args in [
        &["--bogus"][..],
        &["serve", "--ttl", "5x"],
        &["serve", "--threads", "many"],
        &["list", "--ttl", "5s"],
        &["register"],
        &["frobnicate"],
        &["serve", "--addr", "0.0.0.0:0"],
        &["bench", "--op", "delete"],
    ] {
        let out = regcenter(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("regcenter: "), "{err}");
    }
}

#[test]
fn every_command_has_help() {
    for cmd in ["serve", "list", "register", "deregister", "bench"] {
        let out = regcenter(&[cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("usage:"),
            "{cmd}"
        );
    }
}

#[test]
fn list_register_and_deregister_against_a_registry() {
    let s = RegistryServer::start_local().unwrap();
    s.registry().put("arith", "tcp@b:1").unwrap();
    s.registry().put("arith", "tcp@a:1").unwrap();
    let out = regcenter(&["list", "--registry", s.url(), "--service", "arith"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tcp@a:1\ntcp@b:1\n");

    let mut child = Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args([
            "register",
            "--registry",
            s.url(),
            "--addr",
            "tcp@side:1",
            "--weight",
            "3",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the sidecar to register", Duration::from_secs(5), || {
        s.registry().alive("") == ["tcp@side:1"]
    });
    assert_eq!(s.registry().entries()[0].weight, 3);
    // SIGTERM: the sidecar deregisters and exits 0.
    // SAFETY: kill(2) on the child we started, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(s.registry().alive("").is_empty());

    let out = regcenter(&[
        "deregister",
        "--registry",
        s.url(),
        "--service",
        "arith",
        "--addr",
        "tcp@a:1",
    ]);
    assert!(out.status.success());
    assert_eq!(s.registry().alive("arith"), ["tcp@b:1"]);
}

#[test]
fn bench_reports_rate_latency_and_errors() {
    let s = RegistryServer::start_local().unwrap();
    let out = regcenter(&[
        "bench",
        "--registry",
        s.url(),
        "--duration",
        "300ms",
        "--clients",
        "2",
        "--servers",
        "5",
        "--op",
        "mixed",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("req/s") && text.contains("p99") && text.contains("errors       none"),
        "{text}"
    );
    assert!(
        s.registry().alive("bench").is_empty(),
        "the bench removes its servers"
    );
}
