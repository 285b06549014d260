//! Framing two HTTP parsers could read differently (the request-smuggling
//! list), bytes no header may hold, and bodies we will not wait for.

use std::time::{Duration, Instant};

use regcenter::RegistryServer;

use super::{P, answers, closed_within, send};
use crate::common::{raw, wait_until};

/// The request a smuggling attempt hides in what the registry would take
/// for a body, or for the rest of a header.
const SMUGGLED: &str =
    "POST /myRPC/registry HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: tcp@127.0.0.1:9\r\n\r\n";

fn head(lines: &str) -> String {
    format!("POST {P} HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: tcp@127.0.0.1:7\r\n{lines}\r\n")
}

/// Sends `bytes` on a new connection and asserts the registry answers
/// `status` with a reason, closes the connection, and registers nothing.
fn refused(s: &RegistryServer, what: &str, bytes: &[u8], status: u16) {
    let mut c = send(s.local_addr(), bytes);
    let got = answers(&mut c, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "{what}: no answer");
    assert_eq!(got[0].status, status, "{what}: {}", got[0].text());
    // A header line tiny_http cannot split into name and value is refused
    // by tiny_http itself while it reads the head, with an empty 400.
    let by_tiny_http = what.starts_with("a space in a name");
    assert!(
        by_tiny_http || !got[0].body.is_empty(),
        "{what}: the answer says why"
    );
    assert!(
        closed_within(&mut c, Duration::from_secs(10)),
        "{what}: the connection stayed open"
    );
    assert_eq!(s.registry().len(), 0, "{what}: it registered something");
}

#[test]
fn ambiguous_framing_is_refused_and_changes_nothing() {
    let s = RegistryServer::start_local().unwrap();
    let cases = [
        (
            "CL.TE",
            head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n" + SMUGGLED,
        ),
        (
            "TE.CL",
            head("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n") + "0\r\n\r\n" + SMUGGLED,
        ),
        (
            "two equal Content-Length",
            head("Content-Length: 0\r\nContent-Length: 0\r\n") + SMUGGLED,
        ),
        (
            "two different Content-Length",
            head(&format!(
                "Content-Length: 0\r\nContent-Length: {}\r\n",
                SMUGGLED.len()
            )) + SMUGGLED,
        ),
        (
            "Content-Length with a sign",
            head("Content-Length: +0\r\n") + SMUGGLED,
        ),
        (
            "Content-Length with a space inside",
            head("Content-Length: 0 0\r\n") + SMUGGLED,
        ),
        (
            "Content-Length beyond any length tiny_http can read",
            head("Content-Length: 99999999999999999999999\r\n") + SMUGGLED,
        ),
        (
            "Content-Length in hex",
            head("Content-Length: 0x0\r\n") + SMUGGLED,
        ),
        (
            "obs-fold continuation",
            format!(
                "POST {P} HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: tcp@127.0.0.1:7\r\n tcp@127.0.0.1:8\r\n\r\n"
            ) + SMUGGLED,
        ),
        (
            "bare LF inside the head",
            format!(
                "POST {P} HTTP/1.1\r\nHost: x\r\nX-Myrpc-Server: tcp@127.0.0.1:7\nX-Other: 1\r\n\r\n"
            ) + SMUGGLED,
        ),
        ("NUL in a value", head("X-Note: a\0b\r\n") + SMUGGLED),
        (
            "a control byte in a value",
            head("X-Note: a\x1bb\r\n") + SMUGGLED,
        ),
        (
            "a control byte in a name",
            head("X-No\x01te: 1\r\n") + SMUGGLED,
        ),
        (
            "a space in a name (refused by tiny_http)",
            head("X Note: 1\r\n") + SMUGGLED,
        ),
        ("a name with a slash", head("X/Note: 1\r\n") + SMUGGLED),
    ];
    for (what, bytes) in &cases {
        refused(&s, what, bytes.as_bytes(), 400);
    }
}

#[test]
fn bodies_are_refused_without_waiting_for_them() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(1)
        .start()
        .unwrap();
    let a = s.local_addr();
    refused(
        &s,
        "a chunked body",
        (head("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n").as_bytes(),
        413,
    );
    // tiny_http reads no body when the client waits for 100 Continue, and
    // dropping the request would wait for one that never comes.
    let mut held = Vec::new();
    for _ in 0..3 {
        let bytes = head("Expect: 100-continue\r\nContent-Length: 100\r\n");
        let mut c = send(a, bytes.as_bytes());
        let got = answers(&mut c, 1, Duration::from_secs(10));
        assert_eq!(got.len(), 1, "Expect: 100-continue got no answer");
        assert_eq!(got[0].status, 413);
        held.push(c);
    }
    let started = Instant::now();
    assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the only request thread was held {:?}",
        started.elapsed()
    );
    assert_eq!(s.registry().len(), 0);
}

#[test]
fn a_header_with_bytes_beyond_ascii_registers_nothing() {
    // tiny_http refuses such a head while reading it, before a request
    // exists, and closes the connection without an answer (README,
    // "What one bad client cannot do"); the table must stay as it was.
    let s = RegistryServer::start_local().unwrap();
    let bytes = head("X-Note: caf\u{e9}\r\n") + SMUGGLED;
    let mut c = send(s.local_addr(), bytes.as_bytes());
    let got = answers(&mut c, 1, Duration::from_secs(10));
    assert!(
        got.is_empty() || got[0].status == 400,
        "answered {}",
        got[0].status
    );
    assert!(closed_within(&mut c, Duration::from_secs(10)));
    assert_eq!(s.registry().len(), 0);
}

/// A client socket bound to `port` on 127.0.0.1, connected to `to`; retried
/// while the kernel still holds the last connection from that port.
fn connect_from(port: u16, to: std::net::SocketAddr) -> std::net::TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        let from: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        if s.bind(&from.into()).is_ok() && s.connect(&to.into()).is_ok() {
            return s.into();
        }
        assert!(
            Instant::now() < deadline,
            "could not connect from port {port} again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_new_connection_from_the_address_of_a_closed_one_is_served() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(1)
        .start()
        .unwrap();
    let a = s.local_addr();
    let port = super::free_port();
    // A connection refused for its framing, from a port of our choosing.
    let mut first = connect_from(port, a);
    std::io::Write::write_all(
        &mut first,
        (head("Content-Length: +0\r\n") + SMUGGLED).as_bytes(),
    )
    .unwrap();
    assert_eq!(
        answers(&mut first, 1, Duration::from_secs(10))[0].status,
        400
    );
    assert!(closed_within(&mut first, Duration::from_secs(10)));
    drop(first);
    // The same address again at once: what tiny_http had read of the closed
    // connection may still be on its way, so this one's requests are
    // dropped for now; a body it never sends must not hold the intake
    // (every other client would wait meanwhile).
    let mut second = connect_from(port, a);
    std::io::Write::write_all(&mut second, head("Content-Length: 2000\r\n").as_bytes()).unwrap();
    let started = Instant::now();
    assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(second);
    // Once the closed connection is gone, a new one from its address is
    // served as any other.
    wait_until(
        "a new connection from the address to be served",
        Duration::from_secs(10),
        || {
            let mut c = connect_from(port, a);
            std::io::Write::write_all(&mut c, super::req("GET", "/healthz", &[]).as_bytes())
                .unwrap();
            let got = answers(&mut c, 1, Duration::from_secs(5));
            got.first().is_some_and(|r| r.status == 200)
        },
    );
    assert_eq!(s.registry().len(), 0, "the smuggled request was applied");
}
