//! Limits that count what they say, and floods that cut no healthy
//! connection.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use regcenter::RegistryServer;

use super::{P, answers, req, send};
use crate::common::{raw, wait_until};

/// Whether the server has closed `c` (without waiting).
fn is_closed(mut c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 256];
    let closed = match c.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    c.set_nonblocking(false).unwrap();
    closed
}

fn soft_descriptor_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    }
}

#[test]
fn max_connections_counts_connections_not_descriptors() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .max_connections(100)
        .start()
        .unwrap();
    let a = s.local_addr();
    // 120 kept-alive connections, each answered once so tiny_http holds
    // it (two descriptors each): 20 beyond the limit.
    let conns: Vec<TcpStream> = (0..120)
        .map(|_| {
            let mut c = send(a, req("GET", "/healthz", &[]).as_bytes());
            assert_eq!(answers(&mut c, 1, Duration::from_secs(10)).len(), 1);
            c
        })
        .collect();
    let closed = || conns.iter().filter(|c| is_closed(c)).count();
    wait_until(
        "the connections beyond the limit to be closed",
        Duration::from_secs(10),
        || closed() >= 20,
    );
    // The guard looks four times a second; watch a few of its passes.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let n = closed();
        assert_eq!(n, 20, "{n} of 120 connections closed with a limit of 100");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flood_of_connect_and_close_rebuilds_nothing_and_cuts_no_connection() {
    let s = RegistryServer::start_local().unwrap();
    let a = s.local_addr();
    let index = s.registry().index("f");
    let mut watcher = send(
        a,
        req(
            "GET",
            &format!("{P}/f?index={index}&wait=600s&format=text"),
            &[],
        )
        .as_bytes(),
    );
    wait_until("the watcher to park", Duration::from_secs(10), || {
        s.parked() == 1
    });
    let mut kept = send(a, req("GET", "/healthz", &[]).as_bytes());
    assert_eq!(answers(&mut kept, 1, Duration::from_secs(10)).len(), 1);

    // Four threads connect in bursts and close them, as fast as they can,
    // bounded in time and in count: the accept queue is never empty for
    // long, yet tiny_http's accept thread is alive throughout. The bursts
    // stay well within the descriptor limit (three descriptors each).
    let burst = (soft_descriptor_limit() / 32).clamp(16, 500);
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(4);
                let mut n = 0u32;
                while Instant::now() < until && n < 200_000 {
                    let held: Vec<TcpStream> = (0..burst)
                        .filter_map(|_| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
                        .collect();
                    n += held.len() as u32;
                }
                n
            })
        })
        .collect();
    let flooded: u32 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    assert!(flooded > 1000, "the flood made only {flooded} connections");

    assert_eq!(
        s.rebuilds(),
        0,
        "a flood of {flooded} connections rebuilt the server"
    );
    assert_eq!(s.parked(), 1, "the parked watcher was cut");
    let r = raw(
        a,
        "POST",
        &format!("{P}/f"),
        &[("X-Myrpc-Server", "tcp@127.0.0.1:1")],
    );
    assert_eq!(r.status, 200);
    let got = answers(&mut watcher, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "the watcher's connection was cut");
    assert_eq!(got[0].text(), "tcp@127.0.0.1:1\n");
    std::io::Write::write_all(&mut kept, req("GET", "/healthz", &[]).as_bytes()).unwrap();
    assert_eq!(
        answers(&mut kept, 1, Duration::from_secs(10)).len(),
        1,
        "the kept-alive connection was cut"
    );
}
