//! The bearer token: writes need it, reads only when protected.

use regcenter::{Discovery, Error, Heartbeat, RegistryDiscovery, RegistryServer};

use crate::common::raw;

const P: &str = "/myRPC/registry";

fn server(protect_reads: bool) -> RegistryServer {
    RegistryServer::builder()
        .addr("127.0.0.1:0")
        .token("s3cret-token")
        .protect_reads(protect_reads)
        .start()
        .unwrap()
}

#[test]
fn writes_need_the_token_and_reads_are_open() {
    let s = server(false);
    let a = s.local_addr();
    let srv = ("X-Myrpc-Server", "tcp@a:1");
    let r = raw(a, "POST", P, &[srv]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    assert!(r.text().contains("Authorization"), "{}", r.text());
    assert_eq!(
        raw(a, "POST", P, &[srv, ("Authorization", "Bearer wrong")]).status,
        401
    );
    assert_eq!(raw(a, "DELETE", P, &[srv]).status, 401);
    assert!(s.registry().is_empty(), "refused writes change nothing");
    assert_eq!(
        raw(
            a,
            "POST",
            P,
            &[srv, ("Authorization", "Bearer s3cret-token")]
        )
        .status,
        200
    );
    assert_eq!(raw(a, "GET", P, &[]).status, 200, "reads stay open");
}

#[test]
fn protected_reads_need_the_token_too() {
    let s = server(true);
    s.registry().put("", "tcp@a:1").unwrap();
    assert_eq!(raw(s.local_addr(), "GET", P, &[]).status, 401);
    assert_eq!(raw(s.local_addr(), "GET", "/healthz", &[]).status, 200);
    let d = RegistryDiscovery::builder(s.url())
        .token("s3cret-token")
        .build()
        .unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    let anonymous = RegistryDiscovery::new(s.url()).unwrap();
    let e = anonymous.get_all().unwrap_err();
    assert!(matches!(e, Error::Status { status: 401, .. }), "{e}");
}

#[test]
fn heartbeats_carry_the_token_and_stop_on_401() {
    let s = server(false);
    let hb = Heartbeat::builder(s.url(), "tcp@a:1")
        .token("s3cret-token")
        .start()
        .unwrap();
    assert_eq!(s.registry().alive(""), ["tcp@a:1"]);
    hb.stop().unwrap();
    assert!(s.registry().is_empty(), "the DELETE carried the token");
    let e = Heartbeat::builder(s.url(), "tcp@a:1").start().unwrap_err();
    assert!(matches!(e, Error::Status { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("401"), "{e}");
}

#[test]
fn the_cli_takes_the_token_from_a_file_or_the_environment() {
    use std::process::Command;
    let s = server(false);
    let dir = std::env::temp_dir().join(format!("regcenter-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "s3cret-token\n").unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_regcenter"));
        c.args(args).env_remove("REGCENTER_TOKEN");
        if let Some(t) = env {
            c.env("REGCENTER_TOKEN", t);
        }
        c.output().unwrap()
    };
    let out = run(
        &["deregister", "--registry", s.url(), "--addr", "tcp@x:1"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    s.registry().put("", "tcp@x:1").unwrap();
    let f = file.to_str().unwrap();
    let out = run(
        &[
            "deregister",
            "--registry",
            s.url(),
            "--addr",
            "tcp@x:1",
            "--token-file",
            f,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.registry().put("", "tcp@x:1").unwrap();
    let out = run(
        &["deregister", "--registry", s.url(), "--addr", "tcp@x:1"],
        Some("s3cret-token"),
    );
    assert!(out.status.success());
    assert!(s.registry().is_empty());
    // Serving beyond loopback needs a token (or --insecure).
    let out = run(&["serve", "--addr", "0.0.0.0:0"], None);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
