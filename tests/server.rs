//! The HTTP server over real loopback connections.

use std::net::TcpListener;
use std::time::Duration;

use regcenter::RegistryServer;

use crate::common::{raw, threads_named, wait_until};

fn server() -> RegistryServer {
    RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .max_entries(3)
        .start()
        .unwrap()
}

const P: &str = "/myRPC/registry";

fn srv(addr: &str) -> [(&'static str, &str); 1] {
    [("X-Myrpc-Server", addr)]
}

#[test]
fn every_status_code_of_protocol_v1() {
    let s = server();
    let a = s.local_addr();

    let r = raw(a, "POST", P, &srv("tcp@127.0.0.1:7001"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Myrpc-Ttl"), Some("5s"));

    let r = raw(a, "GET", P, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Myrpc-Servers"), Some("tcp@127.0.0.1:7001"));

    let r = raw(a, "POST", P, &[]);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("X-Myrpc-Server"), "{}", r.text());

    for (addr, why) in [("a,b", "comma"), ("a\u{1}b", "only visible ASCII")] {
        let r = raw(a, "POST", P, &srv(addr));
        assert_eq!(r.status, 400, "{addr:?}");
        assert!(r.text().contains(why), "{}", r.text());
    }
    let r = raw(a, "POST", &format!("{P}/bad!name"), &srv("x"));
    assert_eq!(r.status, 400);
    let r = raw(
        a,
        "POST",
        P,
        &[("X-Myrpc-Server", "x"), ("X-Myrpc-Ttl", "soon")],
    );
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("invalid duration"), "{}", r.text());

    assert_eq!(raw(a, "GET", "/nope", &[]).status, 404);
    let r = raw(a, "PUT", P, &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET, POST, DELETE"));

    assert_eq!(raw(a, "DELETE", P, &srv("tcp@127.0.0.1:7001")).status, 200);
    assert_eq!(raw(a, "DELETE", P, &srv("tcp@127.0.0.1:7001")).status, 404);

    for i in 0..3 {
        let addr = format!("tcp@s{i}:1");
        assert_eq!(raw(a, "POST", P, &srv(&addr)).status, 200);
    }
    let r = raw(a, "POST", P, &srv("tcp@one-too-many:1"));
    assert_eq!(r.status, 503);
    assert!(r.header("Retry-After").is_some());

    // Every error above carried a one-line reason.
    let r = raw(a, "GET", "/nope", &[]);
    assert!(r.text().ends_with('\n') && r.text().lines().count() == 1);
    s.shutdown().unwrap();
}

#[test]
fn seed_compatible_answers_carry_no_body() {
    let s = server();
    let a = s.local_addr();
    let r = raw(a, "POST", P, &[("X-Myrpc-Server", "tcp@x:1")]);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("0")));
    assert!(r.body.is_empty());
    let r = raw(a, "GET", P, &[]);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("0")));
    assert!(r.body.is_empty());
    assert_eq!(r.header("X-Myrpc-Servers"), Some("tcp@x:1"));
    assert!(r.header("X-Myrpc-Index").is_some());

    let r = raw(a, "GET", &format!("{P}?format=text"), &[]);
    assert_eq!(r.text(), "tcp@x:1\n");
    assert!(r.header("X-Myrpc-Servers").is_none());
}

#[test]
fn an_empty_listing_has_an_empty_header() {
    let s = server();
    let r = raw(s.local_addr(), "GET", P, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Myrpc-Servers"), Some(""));
}

#[test]
fn named_services_are_isolated() {
    let s = server();
    let a = s.local_addr();
    raw(
        a,
        "POST",
        &format!("{P}/arith"),
        &[("X-Myrpc-Server", "tcp@arith:1")],
    );
    raw(
        a,
        "POST",
        &format!("{P}/echo"),
        &[("X-Myrpc-Server", "tcp@echo:1")],
    );
    raw(a, "POST", P, &[("X-Myrpc-Server", "tcp@default:1")]);
    let list = |svc: &str| raw(a, "GET", &format!("{P}{svc}?format=text"), &[]).text();
    assert_eq!(list("/arith"), "tcp@arith:1\n");
    assert_eq!(list("/echo"), "tcp@echo:1\n");
    assert_eq!(list(""), "tcp@default:1\n");
    assert_eq!(list("/none"), "");
    let r = raw(
        a,
        "DELETE",
        &format!("{P}/echo"),
        &[("X-Myrpc-Server", "tcp@arith:1")],
    );
    assert_eq!(
        r.status, 404,
        "an address is removed only from its own service"
    );
    assert_eq!(list("/arith"), "tcp@arith:1\n");
}

#[test]
fn the_index_header_follows_changes_and_ignores_renewals() {
    let s = server();
    let a = s.local_addr();
    let index = || -> u64 {
        raw(a, "GET", P, &[])
            .header("X-Myrpc-Index")
            .unwrap()
            .parse()
            .unwrap()
    };
    let i0 = index();
    raw(a, "POST", P, &[("X-Myrpc-Server", "tcp@x:1")]);
    let i1 = index();
    assert!(i1 > i0);
    raw(a, "POST", P, &[("X-Myrpc-Server", "tcp@x:1")]);
    assert_eq!(index(), i1);
    raw(a, "DELETE", P, &[("X-Myrpc-Server", "tcp@x:1")]);
    assert!(index() > i1);
}

#[test]
fn entries_expire_over_http() {
    let s = RegistryServer::start_local().unwrap();
    let a = s.local_addr();
    let r = raw(
        a,
        "POST",
        P,
        &[("X-Myrpc-Server", "tcp@x:1"), ("X-Myrpc-Ttl", "100ms")],
    );
    assert_eq!(r.header("X-Myrpc-Ttl"), Some("100ms"));
    wait_until("the entry to expire", Duration::from_secs(5), || {
        raw(a, "GET", P, &[]).header("X-Myrpc-Servers") == Some("")
    });
}

#[test]
fn shutdown_leaves_no_thread_behind_and_frees_the_port() {
    let s = server();
    let addr = s.local_addr();
    let prefix = format!("rc{}-", addr.port());
    // A thread names itself once it runs, so wait for all the names.
    wait_until(
        "the intake, two request threads, the guard, the sweeper, the watch timer and UDP",
        Duration::from_secs(5),
        || threads_named(&prefix) == 7,
    );
    assert_eq!(raw(addr, "GET", "/healthz", &[]).status, 200);
    s.shutdown().unwrap();
    // Joined threads may stay listed in /proc for a moment: the kernel
    // wakes the joiner before it has released the thread. A thread left
    // running stays listed and fails this.
    wait_until("every thread gone", Duration::from_secs(5), || {
        threads_named(&prefix) == 0
    });
    TcpListener::bind(addr).expect("the port is free again");
}

#[test]
fn bad_settings_are_refused() {
    let b = RegistryServer::builder;
    assert!(b().addr("nonsense").start().is_err());
    assert!(b().addr("127.0.0.1:0").path("no-slash").start().is_err());
    assert!(b().addr("127.0.0.1:0").path("/trailing/").start().is_err());
    assert!(b().addr("127.0.0.1:0").threads(0).start().is_err());
    let taken = server();
    let e = b()
        .addr(taken.local_addr().to_string())
        .start()
        .unwrap_err();
    assert!(e.to_string().starts_with("bind 127.0.0.1:"), "{e}");
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RegistryServer>();
    check::<regcenter::Heartbeat>();
    check::<regcenter::RegistryDiscovery>();
    check::<regcenter::MultiServersDiscovery>();
}

#[test]
fn weight_meta_and_ttl_are_validated_and_bad_ones_change_nothing() {
    let s = server();
    let a = s.local_addr();
    let big_meta = format!("k={}", "v".repeat(1100));
    let counter = s.registry().counter();
    for (name, value) in [
        ("X-Myrpc-Weight", "0"),
        ("X-Myrpc-Weight", "-1"),
        ("X-Myrpc-Weight", "10001"),
        ("X-Myrpc-Weight", "abc"),
        ("X-Myrpc-Meta", "=v"),
        ("X-Myrpc-Meta", "k=%G1"),
        ("X-Myrpc-Meta", big_meta.as_str()),
        ("X-Myrpc-Ttl", "-5s"),
        ("X-Myrpc-Ttl", "5x"),
        ("X-Myrpc-Ttl", "99999999999999h"),
    ] {
        let r = raw(
            a,
            "POST",
            P,
            &[("X-Myrpc-Server", "tcp@v:1"), (name, value)],
        );
        assert_eq!(r.status, 400, "{name}: {value}");
        assert_eq!(r.text().lines().count(), 1, "{}", r.text());
    }
    assert!(s.registry().is_empty());
    assert_eq!(s.registry().counter(), counter);
    // Good values are applied; a change of weight moves the index.
    let ok = [
        ("X-Myrpc-Server", "tcp@v:1"),
        ("X-Myrpc-Weight", "7"),
        ("X-Myrpc-Meta", "zone=eu"),
    ];
    assert_eq!(raw(a, "POST", P, &ok).status, 200);
    let i = s.registry().index("");
    let heavier = [
        ("X-Myrpc-Server", "tcp@v:1"),
        ("X-Myrpc-Weight", "8"),
        ("X-Myrpc-Meta", "zone=eu"),
    ];
    assert_eq!(raw(a, "POST", P, &heavier).status, 200);
    assert!(s.registry().index("") > i);
    let e = &s.registry().entries()[0];
    assert_eq!((e.weight, e.meta["zone"].as_str()), (8, "eu"));
}

#[test]
fn a_battery_of_bad_requests_gets_4xx_with_a_reason_and_changes_nothing() {
    use std::io::{Read, Write};
    let s = server();
    let a = s.local_addr();
    let long_addr = "a".repeat(300);
    let long_service = format!("{P}/{}", "s".repeat(200));
    let big = "x".repeat(100 * 1024);
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        ("POST", P.into(), vec![("X-Myrpc-Server", "a,b")]),
        ("POST", P.into(), vec![("X-Myrpc-Server", "a b")]),
        ("POST", P.into(), vec![("X-Myrpc-Server", "a\u{b}b")]),
        ("POST", P.into(), vec![("X-Myrpc-Server", "")]),
        ("POST", P.into(), vec![("X-Myrpc-Server", &long_addr)]),
        ("POST", format!("{P}/.."), vec![("X-Myrpc-Server", "ok")]),
        ("POST", format!("{P}/a/b"), vec![("X-Myrpc-Server", "ok")]),
        ("POST", long_service, vec![("X-Myrpc-Server", "ok")]),
        ("POST", format!("{P}/../x"), vec![("X-Myrpc-Server", "ok")]),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Myrpc-Weight", "0")],
        ),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Myrpc-Weight", "-1")],
        ),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Myrpc-Weight", "10001")],
        ),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Myrpc-Weight", "abc")],
        ),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Myrpc-Ttl", "-5s")],
        ),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Myrpc-Ttl", "5x")],
        ),
        (
            "POST",
            P.into(),
            vec![
                ("X-Myrpc-Server", "ok"),
                ("X-Myrpc-Ttl", "99999999999999999h"),
            ],
        ),
        (
            "POST",
            P.into(),
            vec![("X-Myrpc-Server", "ok"), ("X-Big", &big)],
        ),
        ("BREW", P.into(), vec![("X-Myrpc-Server", "ok")]),
        ("GET", "/../etc/passwd".into(), vec![]),
    ];
    for (method, path, headers) in &cases {
        let r = raw(a, method, path, headers);
        assert!(
            (400..500).contains(&r.status),
            "{method} {path}: {}",
            r.status
        );
        assert!(!r.text().trim().is_empty(), "{method} {path}: no reason");
    }
    // Non-ASCII bytes in a header: tiny_http closes the connection before
    // the request reaches regcenter (it cannot be answered 400).
    let mut c = std::net::TcpStream::connect(a).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"POST /myRPC/registry HTTP/1.1\r\nX-Myrpc-Server: caf\xc3\xa9\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(s.registry().is_empty(), "{:?}", s.registry().entries());
    assert_eq!(s.registry().counter(), 0, "nothing changed");
}
