//! Addresses a client can dial: the `proto@rest` shape the seed's clients
//! split, checked at registration unless the registry is free-form.

use std::time::Duration;

use regcenter::{Registry, RegistryServer};

use crate::common::process::Process;
use crate::common::raw;

const P: &str = "/myRPC/registry";

fn post(s: &RegistryServer, addr: &str) -> (u16, String) {
    let r = raw(s.local_addr(), "POST", P, &[("X-Myrpc-Server", addr)]);
    (r.status, r.text())
}

#[test]
fn registration_requires_an_address_a_client_can_dial() {
    let s = RegistryServer::start_local().unwrap();
    for good in [
        "tcp@127.0.0.1:7001",
        "tcp@[::1]:7001",
        "tcp6@[2001:db8::1]:65535",
        "tcp4@10.0.0.1:1",
        "udp@10.0.0.1:53",
        "http@api.example.org:8080",
        "tcp@localhost:7001",
        "tcp@my_host-1.internal:7001",
        "unix@/run/app.sock",
        "unix@@abstract",
        "grpc+x@anything:goes/here",
    ] {
        let (status, text) = post(&s, good);
        // `unix@@abstract` has a second `@`, which the seed's clients drop.
        if good == "unix@@abstract" {
            assert_eq!(status, 400, "{good}: {text}");
            continue;
        }
        assert_eq!(status, 200, "{good}: {text}");
    }
    for (bad, says) in [
        ("127.0.0.1:7006", "proto@"),
        ("@127.0.0.1:7006", "protocol"),
        ("tcp@", "empty"),
        ("tcp@127.0.0.1", "host:port"),
        ("tcp@127.0.0.1:", "port"),
        ("tcp@127.0.0.1:0", "port"),
        ("tcp@127.0.0.1:65536", "port"),
        ("tcp@127.0.0.1:7a", "port"),
        ("tcp@:7001", "host"),
        ("tcp@::1:7001", "brackets"),
        ("tcp@[::1:7001", "host:port"),
        ("tcp@[not-ip]:7001", "IPv6"),
        ("tcp@10.0.0.256:7001", "host"),
        ("http@host/path:80", "host"),
        ("unix@", "empty"),
        ("tcp@a@b:1", "@"),
    ] {
        let (status, text) = post(&s, bad);
        assert_eq!(status, 400, "{bad} was accepted");
        assert!(
            text.contains(says),
            "{bad}: {text:?} does not mention {says:?}"
        );
        assert_eq!(text.lines().count(), 1, "{bad}: one line: {text:?}");
    }
    assert!(
        !s.registry()
            .alive("")
            .contains(&"127.0.0.1:7006".to_string())
    );
    // The same check guards the in-process table.
    assert!(Registry::new().put("", "127.0.0.1:7006").is_err());
    assert!(Registry::new().put("", "tcp@127.0.0.1:7006").is_ok());
}

#[test]
fn a_free_form_registry_keeps_any_visible_address() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .free_form_addresses(true)
        .start()
        .unwrap();
    for addr in ["127.0.0.1:7006", "tcp@a", "x"] {
        assert_eq!(post(&s, addr).0, 200, "{addr}");
    }
    assert_eq!(post(&s, "a,b").0, 400, "a comma still corrupts listings");
    let reg = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    reg.put("", "127.0.0.1:7006").unwrap();
}

#[test]
fn serve_free_form_addresses_keeps_any_visible_address() {
    for (extra, want) in [(&[][..], 400), (&["--free-form-addresses"][..], 200)] {
        let (mut p, addr) = Process::serve(extra);
        let r = raw(addr, "POST", P, &[("X-Myrpc-Server", "127.0.0.1:7006")]);
        p.signal(libc::SIGTERM);
        assert!(p.wait(Duration::from_secs(20)).success());
        assert_eq!(r.status, want, "{extra:?}: {}", r.text());
    }
}
