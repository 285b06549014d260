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
    for cmd in ["serve", "list", "watch", "register", "deregister", "bench"] {
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

#[test]
fn list_json_prints_weights_and_metadata() {
    let s = RegistryServer::start_local().unwrap();
    let opts = regcenter::PutOptions::new().weight(4).meta("zone", "eu");
    s.registry().put_with("", "tcp@a:1", &opts).unwrap();
    let out = regcenter(&["list", "--json", "--registry", s.url()]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["servers"][0]["weight"], 4);
    assert_eq!(v["servers"][0]["meta"]["zone"], "eu");
}

#[test]
fn watch_prints_the_list_on_every_change() {
    use std::io::{BufRead, BufReader};
    let s = RegistryServer::start_local().unwrap();
    let long = regcenter::PutOptions::new().ttl(Duration::from_secs(60));
    s.registry().put_with("svc", "tcp@a:1", &long).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args(["watch", "--registry", s.url(), "--service", "svc"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a line from regcenter watch")
    };
    assert!(next().starts_with("# index "));
    assert_eq!(next(), "tcp@a:1");
    wait_until("the watch to be parked", Duration::from_secs(5), || {
        s.parked() == 1
    });
    s.registry().put_with("svc", "tcp@b:1", &long).unwrap();
    assert!(next().starts_with("# index "));
    assert_eq!(
        (next(), next()),
        ("tcp@a:1".to_string(), "tcp@b:1".to_string())
    );
    // SAFETY: kill(2) on the child we started, by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
