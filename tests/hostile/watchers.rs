//! Long-polls that do not read, that leave, or that come in numbers.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use regcenter::{PutOptions, RegistryServer};

use super::{P, answers, req, send, send_unread};
use crate::common::{raw, wait_until};

/// A registry whose service `big` lists `n` servers (about 75 bytes each
/// in JSON), and the index of that service. 90 000 of them make a 7 MB
/// answer, more than a send buffer holds (4 MB at most on Linux by
/// default), so a client that does not read it holds the write.
pub(super) fn big(n: usize) -> (RegistryServer, u64) {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .start()
        .unwrap();
    let opts = PutOptions::new().ttl(Duration::from_secs(3600));
    for i in 0..n {
        let addr = format!("tcp@10.{}.{}.{}:7000", i >> 16, (i >> 8) & 255, i & 255);
        s.registry().put_with("big", &addr, &opts).unwrap();
    }
    let index = s.registry().index("big");
    (s, index)
}

fn process_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_change_never_waits_on_watchers_that_do_not_read() {
    let (s, index) = big(90_000);
    let a = s.local_addr();
    // Three watchers of a 7 MB JSON listing that will never read a byte.
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            send_unread(
                a,
                req(
                    "GET",
                    &format!("{P}/big?format=json&index={index}&wait=600s"),
                    &[],
                )
                .as_bytes(),
            )
        })
        .collect();
    // And one of another service that reads.
    let small_index = s.registry().index("small");
    let mut reader = send(
        a,
        req(
            "GET",
            &format!("{P}/small?format=text&index={small_index}&wait=600s"),
            &[],
        )
        .as_bytes(),
    );
    wait_until("four parked watchers", Duration::from_secs(10), || {
        s.parked() == 4
    });

    // The POST that wakes the stalled watchers used to write their answers
    // itself, 10 s each.
    let started = Instant::now();
    let r = raw(
        a,
        "POST",
        &format!("{P}/big"),
        &[("X-Myrpc-Server", "tcp@127.0.0.1:1")],
    );
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a POST waited {:?} on watchers' sockets",
        started.elapsed()
    );
    // Another service's watcher is answered while those writes hang.
    let r = raw(
        a,
        "POST",
        &format!("{P}/small"),
        &[("X-Myrpc-Server", "tcp@127.0.0.1:2")],
    );
    assert_eq!(r.status, 200);
    let got = answers(&mut reader, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the watcher of small waited behind big's");
    assert_eq!(got[0].text(), "tcp@127.0.0.1:2\n");
    drop(stalled);
}

#[test]
fn listings_that_are_never_read_hold_no_thread_other_clients_need() {
    let (s, _) = big(90_000);
    let a = s.local_addr();
    // Twice as many non-readers as request threads.
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            send_unread(
                a,
                req("GET", &format!("{P}/big?format=json"), &[]).as_bytes(),
            )
        })
        .collect();
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "other clients waited {:?} behind readers that never read",
        started.elapsed()
    );
    drop(stalled);
}

#[test]
fn watchers_whose_clients_left_are_forgotten() {
    let s = RegistryServer::start_local().unwrap();
    let a = s.local_addr();
    let index = s.registry().index("gone");
    // Let the server's own descriptors settle before counting.
    assert_eq!(raw(a, "GET", "/healthz", &[]).status, 200);
    let before = process_descriptors();
    let clients: Vec<TcpStream> = (0..50)
        .map(|_| {
            send(
                a,
                req("GET", &format!("{P}/gone?index={index}&wait=600s"), &[]).as_bytes(),
            )
        })
        .collect();
    wait_until("50 parked watchers", Duration::from_secs(10), || {
        s.parked() == 50
    });
    drop(clients);
    wait_until(
        "the departed watchers to be forgotten",
        Duration::from_secs(10),
        || s.parked() == 0,
    );
    // Each had held two descriptors of tiny_http's until its wait ended.
    wait_until(
        "their descriptors to be released",
        Duration::from_secs(10),
        || process_descriptors() <= before + 5,
    );
}

#[test]
fn parked_watchers_are_capped_and_the_next_is_told_to_retry() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .max_watchers(5)
        .start()
        .unwrap();
    let a = s.local_addr();
    let index = s.registry().index("w");
    let path = format!("{P}/w?index={index}&wait=600s");
    let _held: Vec<TcpStream> = (0..5)
        .map(|_| send(a, req("GET", &path, &[]).as_bytes()))
        .collect();
    wait_until("five parked watchers", Duration::from_secs(10), || {
        s.parked() == 5
    });
    let mut sixth = send(a, req("GET", &path, &[]).as_bytes());
    let got = answers(&mut sixth, 1, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "the sixth long-poll was answered at once");
    assert_eq!(got[0].status, 503);
    assert!(got[0].header("Retry-After").is_some());
    assert!(got[0].text().contains("at most 5"), "{}", got[0].text());
    assert_eq!(s.parked(), 5);
}

#[test]
fn a_parked_watcher_whose_connection_the_guard_closes_is_forgotten() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .header_timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let a = s.local_addr();
    let index = s.registry().index("g");
    // A long-poll, then the start of a head that never ends: the guard
    // answers 408 and shuts the connection; the long-poll must go too.
    let mut c = send(
        a,
        req("GET", &format!("{P}/g?index={index}&wait=600s"), &[]).as_bytes(),
    );
    wait_until("the long-poll to park", Duration::from_secs(10), || {
        s.parked() == 1
    });
    // One byte every 50 ms, the attack's own pace, until the guard acts.
    let until = Instant::now() + Duration::from_secs(10);
    for b in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().cycle() {
        if s.parked() == 0 || Instant::now() > until {
            break;
        }
        if std::io::Write::write_all(&mut c, &[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.parked(), 0, "the long-poll outlived its connection");
    assert!(super::closed_within(&mut c, Duration::from_secs(10)));
}

#[test]
fn long_polls_longer_than_the_header_timeout_are_answered_not_cut() {
    // The guard once took a connection it first met after its request was
    // taken for one still sending its head: a long-poll of a new
    // connection, parked longer than the header timeout, got a 408.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .header_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    s.registry()
        .put_with(
            "",
            "tcp@127.0.0.1:7001",
            &PutOptions::new().ttl(Duration::from_secs(3600)),
        )
        .unwrap();
    let index = s.registry().index("");
    // One connection after another, as clients that close between polls.
    for i in 0..4 {
        let mut c = send(
            s.local_addr(),
            req(
                "GET",
                &format!("{P}?format=text&index={index}&wait=3s"),
                &[],
            )
            .as_bytes(),
        );
        let got = answers(&mut c, 1, Duration::from_secs(20));
        assert_eq!(got.len(), 1, "long-poll {i}: no answer");
        assert_eq!(got[0].status, 200, "long-poll {i}: {:?}", got[0]);
    }
}
