//! Draining (`X-Myrpc-Status`) over loopback, through the seed's own path:
//! renewals that carry only `X-Myrpc-Server`, as the seed's Go heartbeat
//! sends them, and listings read from `X-Myrpc-Servers` alone, as the
//! seed's Go clients read them.

use std::thread;
use std::time::Duration;

use regcenter::RegistryServer;

use crate::common::{Raw, lasting_registry, raw, wait_until};

const P: &str = "/myRPC/registry";
const SOON: Duration = Duration::from_secs(5);

/// A POST as the seed's heartbeat sends it, with a status when given.
fn post(s: &RegistryServer, addr: &str, status: Option<&str>) -> Raw {
    let mut headers = vec![("X-Myrpc-Server", addr)];
    if let Some(st) = status {
        headers.push(("X-Myrpc-Status", st));
    }
    raw(s.local_addr(), "POST", &format!("{P}/svc"), &headers)
}

/// The list a seed client reads, and the index beside it.
fn seed_list(s: &RegistryServer) -> (String, u64) {
    let r = raw(s.local_addr(), "GET", &format!("{P}/svc"), &[]);
    assert_eq!(r.status, 200);
    let servers = r.header("X-Myrpc-Servers").expect("the seed header");
    (servers.to_string(), index(&r))
}

fn index(r: &Raw) -> u64 {
    r.header("X-Myrpc-Index").unwrap().parse().unwrap()
}

fn json(s: &RegistryServer) -> serde_json::Value {
    let r = raw(s.local_addr(), "GET", &format!("{P}/svc?format=json"), &[]);
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn a_drained_server_leaves_the_seed_header_until_it_is_up_again() {
    let s = lasting_registry();
    assert_eq!(post(&s, "tcp@a:1", None).status, 200);
    assert_eq!(post(&s, "tcp@b:1", None).status, 200);
    let (list, before) = seed_list(&s);
    assert_eq!(list, "tcp@a:1,tcp@b:1");

    assert_eq!(post(&s, "tcp@a:1", Some("draining")).status, 200);
    let (list, drained) = seed_list(&s);
    assert_eq!(list, "tcp@b:1", "a draining server is left out");
    assert!(drained > before, "a status change is a change");
    let text = raw(s.local_addr(), "GET", &format!("{P}/svc?format=text"), &[]);
    assert_eq!(text.text(), "tcp@b:1\n");
    let v = json(&s);
    assert_eq!(v["servers"][0]["addr"], "tcp@a:1");
    assert_eq!(v["servers"][0]["status"], "draining");
    assert_eq!(v["servers"][1]["status"], "up");

    // The seed's heartbeat never sends the header: its renewals keep the
    // drain, and change nothing.
    for _ in 0..3 {
        assert_eq!(post(&s, "tcp@a:1", None).status, 200);
    }
    assert_eq!(seed_list(&s), ("tcp@b:1".to_string(), drained));

    // Any other value is refused and changes nothing.
    let r = post(&s, "tcp@a:1", Some("sleeping"));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("X-Myrpc-Status"), "{}", r.text());
    assert_eq!(seed_list(&s), ("tcp@b:1".to_string(), drained));

    assert_eq!(post(&s, "tcp@a:1", Some("up")).status, 200);
    let (list, up) = seed_list(&s);
    assert_eq!(list, "tcp@a:1,tcp@b:1");
    assert!(up > drained);
}

#[test]
fn a_status_change_wakes_a_parked_long_poll_and_a_renewal_does_not() {
    let s = lasting_registry();
    assert_eq!(post(&s, "tcp@a:1", None).status, 200);
    let (_, n) = seed_list(&s);
    let addr = s.local_addr();
    let path = format!("{P}/svc?index={n}&wait=30s");
    let watcher = thread::spawn(move || raw(addr, "GET", &path, &[]));
    wait_until("the long-poll to be parked", SOON, || s.parked() == 1);

    assert_eq!(post(&s, "tcp@a:1", None).status, 200);
    assert_eq!(post(&s, "tcp@a:1", Some("up")).status, 200);
    // Both renewals were committed before this line.
    assert_eq!(s.parked(), 1, "woken by a renewal");

    assert_eq!(post(&s, "tcp@a:1", Some("draining")).status, 200);
    let r = watcher.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Myrpc-Servers"), Some(""));
    assert!(index(&r) > n);
}
