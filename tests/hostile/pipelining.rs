//! Requests pipelined on one connection: behind a parked long-poll, and in
//! the order they were sent.

use std::time::{Duration, Instant};

use regcenter::RegistryServer;

use super::{P, answers, req, send};
use crate::common::raw;

fn server() -> RegistryServer {
    RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .start()
        .unwrap()
}

#[test]
fn a_request_pipelined_behind_a_parked_long_poll_is_answered_and_freezes_nothing() {
    let s = server();
    let a = s.local_addr();
    let hostile = format!(
        "{}{}",
        req("GET", &format!("{P}/x?index=0&wait=600s"), &[]),
        req("GET", "/healthz", &[])
    );
    // Two such connections used to hold both request threads in respond(),
    // each behind its own parked long-poll.
    let mut c1 = send(a, hostile.as_bytes());
    let mut c2 = send(a, hostile.as_bytes());
    for c in [&mut c1, &mut c2] {
        let got = answers(c, 2, Duration::from_secs(10));
        assert_eq!(got.len(), 2, "the long-poll and the request behind it");
        assert_eq!(got[0].status, 200);
        assert!(got[0].header("X-Myrpc-Index").is_some());
        assert_eq!(got[1].status, 200);
        assert_eq!(got[1].text(), "ok\n");
    }
    assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
}

#[test]
fn a_change_is_committed_while_a_connection_pipelines_watches_of_it() {
    let s = server();
    let a = s.local_addr();
    // The second watch, of the service the POST changes, used to be parked
    // behind the first; answering it blocked the POST forever.
    let watches = format!(
        "{}{}",
        req("GET", &format!("{P}/a?index=0&wait=600s"), &[]),
        req("GET", &format!("{P}/b?index=0&wait=600s&format=text"), &[])
    );
    let mut w = send(a, watches.as_bytes());
    let started = Instant::now();
    let post = std::thread::spawn(move || {
        raw(
            a,
            "POST",
            &format!("{P}/b"),
            &[("X-Myrpc-Server", "tcp@127.0.0.1:7001")],
        )
        .status
    });
    let got = answers(&mut w, 2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "both watches answered");
    assert_eq!(post.join().unwrap(), 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(s.parked(), 0);
}

#[test]
fn pipelined_registrations_and_deregistrations_apply_in_the_order_sent() {
    // More request threads than cores, and several connections at once,
    // give requests of one connection every chance to overtake each other.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(4)
        .start()
        .unwrap();
    let a = s.local_addr();
    let pairs = 300;
    for round in 0..3 {
        overtaking_round(&s, a, pairs, round);
    }
}

fn overtaking_round(s: &RegistryServer, a: std::net::SocketAddr, pairs: usize, round: usize) {
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut batch = String::new();
                for i in 0..pairs {
                    let addr = format!("tcp@127.0.{round}.1:{}", 10_000 + c * 1000 + i);
                    let h = [("X-Myrpc-Server", addr.as_str()), ("X-Myrpc-Ttl", "1h")];
                    batch.push_str(&req("POST", &format!("{P}/order"), &h));
                    batch.push_str(&req("DELETE", &format!("{P}/order"), &h));
                }
                let mut conn = send(a, batch.as_bytes());
                answers(&mut conn, 2 * pairs, Duration::from_secs(30))
            })
        })
        .collect();
    for c in clients {
        let got = c.join().unwrap();
        assert_eq!(got.len(), 2 * pairs);
        let missed = got
            .iter()
            .skip(1)
            .step_by(2)
            .filter(|r| r.status != 200)
            .count();
        assert_eq!(missed, 0, "every DELETE found the POST sent before it");
    }
    assert!(
        s.registry().alive("order").is_empty(),
        "ghost servers: {:?}",
        s.registry().alive("order")
    );
}

#[test]
fn a_get_pipelined_after_a_post_lists_it() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(4)
        .start()
        .unwrap();
    let a = s.local_addr();
    let n = 200;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut batch = String::new();
                for i in 0..n {
                    let addr = format!("tcp@127.0.0.1:{}", 20_000 + c * 1000 + i);
                    batch.push_str(&req(
                        "POST",
                        &format!("{P}/seen{c}"),
                        &[("X-Myrpc-Server", &addr), ("X-Myrpc-Ttl", "1h")],
                    ));
                    batch.push_str(&req("GET", &format!("{P}/seen{c}?format=text"), &[]));
                }
                let mut conn = send(a, batch.as_bytes());
                (c, answers(&mut conn, 2 * n, Duration::from_secs(30)))
            })
        })
        .collect();
    for h in clients {
        let (c, got) = h.join().unwrap();
        assert_eq!(got.len(), 2 * n);
        for (i, pair) in got.chunks(2).enumerate() {
            let addr = format!("tcp@127.0.0.1:{}", 20_000 + c * 1000 + i);
            assert!(
                pair[1].text().lines().any(|l| l == addr),
                "GET {i} on connection {c} did not list the POST before it"
            );
        }
    }
}

#[test]
fn sigterm_sigint_and_sighup_stop_the_registry_promptly_whatever_clients_hold() {
    use crate::common::process::Process;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let (mut p, a) = Process::serve(&[]);
        let mut held = Vec::new();
        // Parked long-polls with requests pipelined behind them: they used
        // to keep the process alive until their 600 s passed.
        let hostile = format!(
            "{}{}",
            req("GET", &format!("{P}/x?index=0&wait=600s"), &[]),
            req("GET", "/healthz", &[])
        );
        for _ in 0..2 {
            held.push(send(a, hostile.as_bytes()));
        }
        // Plain parked long-polls, a head that never ends, and a body that
        // never comes.
        for _ in 0..2 {
            held.push(send(
                a,
                req("GET", &format!("{P}/y?index=0&wait=600s"), &[]).as_bytes(),
            ));
        }
        held.push(send(a, b"GET /healthz HTTP/1.1\r\nX-Slow: "));
        held.push(send(
            a,
            format!("POST {P} HTTP/1.1\r\nX-Myrpc-Server: tcp@127.0.0.1:1\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
                .as_bytes(),
        ));
        assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
        let started = Instant::now();
        p.signal(sig);
        let status = p.wait(Duration::from_secs(10));
        assert!(status.success(), "signal {sig}: {status:?}");
        eprintln!("signal {sig}: exited in {:?}", started.elapsed());
        drop(held);
    }
}

#[test]
fn a_connection_that_pipelines_without_reading_is_closed_not_buffered() {
    let (s, _) = super::watchers::big(90_000);
    let a = s.local_addr();
    // A 7 MB answer it does not read holds its lane; behind it, more
    // requests than a lane keeps.
    let mut batch = req("GET", &format!("{P}/big?format=json"), &[]);
    for _ in 0..1100 {
        batch.push_str(&req("GET", "/healthz", &[]));
    }
    let _c = super::send_unread(a, batch.as_bytes());
    crate::common::wait_until(
        "the connection to be closed for pipelining",
        Duration::from_secs(8),
        || {
            raw(a, "GET", "/metrics", &[])
                .text()
                .contains("regcenter_connections_closed_total{reason=\"pipelining\"} 1")
        },
    );
    assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
}
