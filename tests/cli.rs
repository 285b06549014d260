//! The `regcenter` binary: usage errors, list/register/deregister, bench.

use std::process::{Command, Stdio};
use std::time::Duration;

use regcenter::RegistryServer;

use crate::common::process::regcenter;
use crate::common::wait_until;

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
        &["bench", "--services", "3"],
        &["bench", "--op", "scale", "--beats", "tcp"],
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
fn bench_scale_reports_propagation_the_registry_and_errors() {
    let s = RegistryServer::start_local().unwrap();
    let out = regcenter(&[
        "bench",
        "--registry",
        s.url(),
        "--op",
        "scale",
        "--servers",
        "12",
        "--services",
        "3",
        "--clients",
        "6",
        "--changes",
        "10",
        "--period",
        "300ms",
        "--ttl",
        "3s",
        "--duration",
        "1s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let changes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("changes"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no changes in {text}"));
    assert!(changes > 0, "{text}");
    // Two watchers a service: each change is seen twice.
    let seen = format!("seen {} of {} times", changes * 2, changes * 2);
    for what in [
        &seen[..],
        "propagation  p50",
        "registry     pid ",
        "errors       none",
    ] {
        assert!(text.contains(what), "no {what:?} in {text}");
    }
    for svc in ["scale-0", "scale-1", "scale-2"] {
        assert!(
            s.registry().alive(svc).is_empty(),
            "the bench removes its servers"
        );
    }
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

/// `regcenter ARGS` with `REGCENTER_LOG=warn`: its exit code and stderr.
fn code_and_stderr(args: &[&str]) -> (Option<i32>, String) {
    let out = regcenter(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn input_the_cli_or_the_registry_refuses_exits_2_naming_the_flag() {
    let s = RegistryServer::start_local().unwrap();
    let long_meta = format!("k={}", "v".repeat(1100));
    for (args, flag) in [
        (
            &["serve", "--addr", "127.0.0.1:0", "--max-ttl", "100h"][..],
            "--max-ttl",
        ),
        (
            &["serve", "--addr", "127.0.0.1:0", "--threads", "0"],
            "--threads",
        ),
        (
            &[
                "register",
                "--registry",
                s.url(),
                "--addr",
                "tcp@x:1",
                "--weight",
                "0",
            ],
            "--weight",
        ),
        (
            &["list", "--registry", s.url(), "--service", "a/b"],
            "--service",
        ),
        (
            &["deregister", "--registry", s.url(), "--addr", "bad,addr"],
            "--addr",
        ),
        (
            &["bench", "--registry", s.url(), "--duration", "0s"],
            "--duration",
        ),
        // Refused by the registry itself, with a 400.
        (
            &[
                "register",
                "--registry",
                s.url(),
                "--addr",
                "tcp@x:1",
                "--meta",
                &long_meta,
            ],
            "400",
        ),
    ] {
        let (code, err) = code_and_stderr(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.starts_with("regcenter: "), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} does not name {flag}: {err}");
        assert!(!err.contains("max_ttl"), "{err}");
    }
    assert!(s.registry().is_empty());
}

#[test]
fn version_is_printed_with_either_flag() {
    for flag in ["--version", "-V"] {
        let out = regcenter(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("regcenter {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let s = RegistryServer::start_local().unwrap();
    // More than a pipe holds, so that the writes meet the closed end.
    for i in 0..4000 {
        let addr = format!("tcp@a-rather-long-host-name-for-the-pipe-{i}:7001");
        crate::common::put_for_a_minute(s.registry(), "", &addr);
    }
    for args in [&["list", "--registry", s.url()][..], &["--help"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_regcenter"))
            .args(args)
            .env("REGCENTER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

#[test]
fn deregistering_an_address_that_is_not_registered_exits_1() {
    let s = RegistryServer::start_local().unwrap();
    let (code, err) = code_and_stderr(&["deregister", "--registry", s.url(), "--addr", "tcp@x:1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tcp@x:1 was not registered"), "{err}");
}

#[test]
fn register_says_it_keeps_an_address_registered_only_once_the_registry_took_it() {
    let port = crate::hostile::free_port();
    let url = format!("http://127.0.0.1:{port}/myRPC/registry");
    let mut p = crate::common::process::Process::spawn(
        &[
            "register",
            "--registry",
            &url,
            "--addr",
            "tcp@late:1",
            "--period",
            "100ms",
        ],
        &[("REGCENTER_LOG", "warn")],
    );
    let line = p.line_containing("not registered yet", Duration::from_secs(10));
    assert!(!line.contains("keeping"), "{line}");
    let s = RegistryServer::builder()
        .addr(format!("127.0.0.1:{port}"))
        .start()
        .unwrap();
    p.line_containing("keeping tcp@late:1 registered", Duration::from_secs(30));
    assert_eq!(s.registry().alive(""), ["tcp@late:1"]);
    p.signal(libc::SIGTERM);
    let (code, lines) = p.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:#?}");
    let keeping = lines.iter().position(|l| l.contains("keeping"));
    let not_yet = lines.iter().position(|l| l.contains("not registered yet"));
    assert!(keeping > not_yet, "{lines:#?}");
}

#[test]
fn watch_says_when_the_registry_is_down_and_when_it_is_back() {
    let port = crate::hostile::free_port();
    let url = format!("http://127.0.0.1:{port}/myRPC/registry");
    let mut p = crate::common::process::Process::spawn(
        &["watch", "--registry", &url],
        &[("REGCENTER_LOG", "warn")],
    );
    p.line_containing("unreachable", Duration::from_secs(10));
    let s = RegistryServer::builder()
        .addr(format!("127.0.0.1:{port}"))
        .start()
        .unwrap();
    p.line_containing("answers", Duration::from_secs(30));
    drop(s);
    p.signal(libc::SIGTERM);
    let (code, lines) = p.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{lines:#?}");
}

#[test]
fn list_of_something_that_is_not_a_registry_exits_1_saying_so() {
    let s = RegistryServer::start_local().unwrap();
    let root = s.url().replace("/myRPC/registry", "/");
    let nope = s.url().replace("/myRPC/registry", "/nope");
    // A server answering 200 with neither X-Myrpc-Index nor X-Myrpc-Servers.
    let other = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let other_url = format!(
        "http://{}/myRPC/registry",
        other.server_addr().to_ip().unwrap()
    );
    let answerer = std::thread::spawn(move || {
        while let Ok(Some(rq)) = other.recv_timeout(Duration::from_secs(10)) {
            let _ = rq.respond(tiny_http::Response::from_string("hello"));
        }
    });
    for url in [&root, &nope, &other_url] {
        let (code, err) = code_and_stderr(&["list", "--registry", url]);
        assert_eq!(code, Some(1), "{url}: {err}");
        assert!(err.starts_with("regcenter: "), "{url}: {err}");
        assert!(
            err.contains("not a registry") || err.contains("404"),
            "{url}: {err}"
        );
    }
    // The seed's registry with no server is still a registry.
    let seed = crate::common::SeedRegistry::start();
    let (code, err) = code_and_stderr(&["list", "--registry", &seed.url()]);
    assert_eq!(code, Some(0), "{err}");
    answerer.join().unwrap();
}

#[test]
fn bench_says_what_it_runs_before_it_starts() {
    let s = RegistryServer::start_local().unwrap();
    let (code, err) = code_and_stderr(&[
        "bench",
        "--registry",
        s.url(),
        "--duration",
        "1200ms",
        "--clients",
        "2",
        "--servers",
        "3",
        "--op",
        "renew",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let first = err.lines().next().unwrap_or_default();
    for what in [s.url(), "renew", "2 clients", "3 servers", "1.2s"] {
        assert!(first.contains(what), "no {what:?} in {first:?}");
    }
    assert!(
        err.lines().nth(1).is_some_and(|l| l.contains(" req/s")),
        "{err}"
    );
}

#[test]
fn a_port_in_use_or_a_snapshot_that_cannot_be_written_is_refused_at_start_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let missing = format!("/nonexistent-regcenter-{}/table.snap", std::process::id());
    for (args, names) in [
        (&["serve", "--addr", &port][..], ["--addr", "in use"]),
        (
            &["serve", "--addr", "127.0.0.1:0", "--snapshot", &missing],
            ["--snapshot", "does not exist"],
        ),
        // A directory no one may create files in, root included.
        (
            &[
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--snapshot",
                "/proc/table.snap",
            ],
            ["--snapshot", "cannot be written"],
        ),
    ] {
        let (code, err) = code_and_stderr(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for name in names {
            assert!(err.contains(name), "{args:?}: no {name:?} in {err}");
        }
    }
    drop(taken);
}
