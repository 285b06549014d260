//! Hostile memory: clients that register and deregister without end, or
//! renew with an ever shorter TTL, must not make the registry hold more
//! than its live entries need.

use std::time::Duration;

use regcenter::{Error, PutOptions, Registry};

const HOUR: Duration = Duration::from_secs(3600);

/// Room every part of the table may keep beyond its live entries: a fixed
/// allowance plus a constant factor, whatever came and went before. (Room
/// is given back once a quarter of it is used, and grows by doubling.)
fn assert_bounded(reg: &Registry, when: &str) {
    let f = reg.footprint();
    // One expiry item an entry at most: none is left behind.
    assert!(
        f.queued <= f.entries,
        "{when}: {} expiry items for {} live entries: {f:?}",
        f.queued,
        f.entries
    );
    let allowed = 16 * f.entries + 4096;
    for (part, room) in [
        ("expiry queue room", f.queue_room),
        ("service map room", f.service_room),
        ("table slots", f.slots),
        ("cold places", f.places),
    ] {
        assert!(
            room <= allowed,
            "{when}: {room} {part} for {} live entries (at most {allowed}): {f:?}",
            f.entries
        );
    }
    // An address is at most 255 bytes, in a place of at most 256.
    assert!(
        f.text_bytes <= 256 * allowed,
        "{when}: {} bytes of address text for {} live entries: {f:?}",
        f.text_bytes,
        f.entries
    );
}

/// An address of wave `w`, number `i`: packed IPv4, short text and long
/// host names in turn, so every kind of storage sees the churn.
fn addr(w: usize, i: usize) -> String {
    match i % 3 {
        0 => format!("tcp@10.{}.{}.{}:7001", w % 256, i / 256 % 256, i % 256),
        1 => format!("u@{w}.{i}"),
        _ => format!(
            "tcp@node-{i}.wave-{w}.{}.example.org:7001",
            "x".repeat(i % 90)
        ),
    }
}

#[test]
fn waves_of_registrations_and_deletions_leave_only_the_live_entries() {
    let reg = Registry::builder().max_entries(100).build().unwrap();
    let opts = PutOptions::new().ttl(HOUR).meta("zone", "a");
    // Ten entries stay throughout, beside the churn.
    for i in 0..10 {
        reg.put_with("steady", &addr(999, i), &opts).unwrap();
    }
    for w in 0..10 {
        // 20 000 registrations and as many deletions, 90 at a time (the
        // limit is 100), spread over services that come and go.
        for batch in 0..20_000 / 90 {
            let service = format!("svc-{}", batch % 37);
            let addrs: Vec<String> = (0..90).map(|i| addr(w, batch * 90 + i)).collect();
            for a in &addrs {
                reg.put_with(&service, a, &opts).unwrap();
            }
            for a in &addrs {
                assert!(reg.remove(&service, a).unwrap(), "{a}");
            }
        }
        assert_eq!(reg.len(), 10);
        assert_bounded(&reg, &format!("after wave {w}"));
    }
    assert_eq!(reg.services(), ["steady"]);
}

#[test]
fn renewing_with_an_ever_shorter_ttl_keeps_the_expiry_queue_small() {
    let reg = Registry::new();
    reg.put_with("", "tcp@10.0.0.1:7001", &PutOptions::new().ttl(HOUR))
        .unwrap();
    // Each renewal asks for 30 ms less than the one before: 3600 s down to
    // 600 s, every one an earlier deadline than the last.
    for i in 1..=100_000u64 {
        let ttl = HOUR - Duration::from_millis(30 * i);
        reg.put_with("", "tcp@10.0.0.1:7001", &PutOptions::new().ttl(ttl))
            .unwrap();
        if i % 10_000 == 0 {
            assert_bounded(&reg, &format!("after {i} renewals"));
        }
    }
    assert_eq!(reg.len(), 1);
    let left = reg.entries()[0].expires_in.unwrap();
    assert!(left <= Duration::from_secs(600), "{left:?}");
}

#[test]
fn registering_again_in_one_clock_tick_leaves_one_expiry_item() {
    // Each registration of an address queues an item for the same time:
    // the removals between them must take theirs away.
    let clock = regcenter::ManualClock::new();
    let reg = Registry::builder().clock(clock.clone()).build().unwrap();
    for i in 0..5000 {
        let a = addr(4, i);
        for _ in 0..3 {
            reg.put("", &a).unwrap();
            assert!(reg.remove("", &a).unwrap());
        }
        reg.put("", &a).unwrap();
    }
    assert_bounded(&reg, "after 5 000 addresses registered four times");
    clock.advance(Duration::from_millis(4999));
    assert_eq!(reg.len(), 5000);
    clock.advance(Duration::from_millis(1));
    assert_eq!(reg.len(), 0);
    assert_eq!(reg.stats().expiries, 5000);
}

#[test]
fn a_service_that_shrinks_gives_back_its_room() {
    let reg = Registry::new();
    let opts = PutOptions::new().ttl(HOUR);
    let addrs: Vec<String> = (0..60_000).map(|i| addr(1, i)).collect();
    for a in &addrs {
        reg.put_with("big", a, &opts).unwrap();
    }
    let full = reg.footprint();
    for a in &addrs[10..] {
        assert!(reg.remove("big", a).unwrap());
    }
    assert_bounded(&reg, "after 59 990 of 60 000 entries left");
    let f = reg.footprint();
    assert!(
        f.slots * 100 < full.slots && f.text_bytes * 100 < full.text_bytes,
        "{f:?} kept from {full:?}"
    );
    // What is left is whole.
    let mut want: Vec<String> = addrs[..10].to_vec();
    want.sort();
    assert_eq!(reg.alive("big"), want);
    for a in &addrs[..10] {
        assert!(!reg.put_with("big", a, &opts).unwrap().changed, "{a}");
    }
}

#[test]
fn services_that_come_and_go_leave_no_room_behind() {
    let reg = Registry::new();
    for wave in 0..3 {
        for i in 0..30_000 {
            reg.put(&format!("svc-{wave}-{i}"), &addr(wave, i)).unwrap();
        }
        for i in 0..30_000 {
            assert!(
                reg.remove(&format!("svc-{wave}-{i}"), &addr(wave, i))
                    .unwrap()
            );
        }
        assert_bounded(&reg, &format!("after wave {wave} of 30 000 services"));
    }
    assert!(reg.services().is_empty());
}

#[test]
fn a_mass_expiry_gives_back_the_expiry_queue() {
    let clock = regcenter::ManualClock::new();
    let reg = Registry::builder().clock(clock.clone()).build().unwrap();
    for i in 0..50_000 {
        reg.put("", &addr(2, i)).unwrap();
    }
    clock.advance(Duration::from_secs(5));
    assert_eq!(reg.sweep(), 50_000);
    assert_bounded(&reg, "after every entry expired");
}

#[test]
fn registrations_refused_at_the_limit_leave_nothing_behind() {
    let reg = Registry::builder().max_entries(100).build().unwrap();
    for i in 0..100 {
        reg.put(&format!("svc-{}", i % 10), &addr(3, i)).unwrap();
    }
    let (before, stats, services) = (reg.footprint(), reg.stats(), reg.services());
    for i in 100..20_100 {
        let service = format!("new-{}", i % 1000);
        for s in [service.as_str(), "svc-1"] {
            assert!(
                matches!(reg.put(s, &addr(3, i)), Err(Error::Full { limit: 100 })),
                "{s} {i}"
            );
        }
    }
    assert_eq!(reg.footprint(), before);
    assert_eq!((reg.stats(), reg.services()), (stats, services));
}

/// Set in the child process that runs
/// [`churn_over_http_does_not_grow_the_resident_memory`] alone.
const ALONE: &str = "REGCENTER_TEST_MEMORY_ALONE";

/// The process's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm: size resident ...");
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as u64
}

/// One keep-alive connection that sends requests in batches (pipelined)
/// and reads every answer.
struct Client {
    stream: std::net::TcpStream,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Sends `requests` (method, address, TTL header), then reads as many
    /// answers; returns their status codes.
    fn batch(&mut self, requests: &[(&str, String, String)]) -> Vec<u16> {
        use std::io::{BufRead, Read, Write};
        let mut out = String::new();
        for (method, addr, ttl) in requests {
            out.push_str(&format!(
                "{method} /myRPC/registry/churn HTTP/1.1\r\nHost: x\r\n\
                 X-Myrpc-Server: {addr}\r\nX-Myrpc-Ttl: {ttl}\r\nContent-Length: 0\r\n\r\n"
            ));
        }
        self.stream.write_all(out.as_bytes()).expect("send a batch");
        let mut codes = Vec::with_capacity(requests.len());
        for _ in requests {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("a status line");
            let code = line.split(' ').nth(1).and_then(|c| c.parse().ok());
            codes.push(code.unwrap_or_else(|| panic!("status line {line:?}")));
            let mut length = 0;
            loop {
                line.clear();
                self.reader.read_line(&mut line).expect("a header line");
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().expect("a length");
                }
            }
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body).expect("the body");
        }
        codes
    }
}

#[test]
fn churn_over_http_does_not_grow_the_resident_memory() {
    // Tests run side by side in one process, and their memory comes and
    // goes: this one runs again alone, in a process of its own, and reads
    // that process's resident memory.
    if std::env::var_os(ALONE).is_none() {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hostile::memory::churn_over_http_does_not_grow_the_resident_memory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run this test alone");
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "alone, it failed:\n{text}");
        assert!(text.contains("1 passed"), "it did not run alone:\n{text}");
        return;
    }
    let server = regcenter::RegistryServer::builder()
        .addr("127.0.0.1:0")
        .max_entries(100)
        .threads(2)
        .start()
        .unwrap();
    let mut client = Client::connect(server.local_addr());
    let hour = "1h".to_string();
    let mut shorter = 3_600_000u64;
    let mut resident = Vec::new();
    for w in 0..8 {
        // 10 000 registrations and deletions, 90 at a time, and 2 500
        // renewals of one entry, each with a shorter TTL than the last.
        for batch in 0..10_000 / 90 {
            let addrs: Vec<String> = (0..90).map(|i| addr(w, batch * 90 + i)).collect();
            let puts: Vec<_> = addrs
                .iter()
                .map(|a| ("POST", a.clone(), hour.clone()))
                .collect();
            assert!(client.batch(&puts).iter().all(|&c| c == 200));
            let dels: Vec<_> = addrs
                .iter()
                .map(|a| ("DELETE", a.clone(), hour.clone()))
                .collect();
            assert!(client.batch(&dels).iter().all(|&c| c == 200));
        }
        for _ in 0..25 {
            let renewals: Vec<_> = (0..100)
                .map(|_| {
                    shorter -= 1;
                    (
                        "POST",
                        "tcp@10.0.0.1:7001".to_string(),
                        format!("{shorter}ms"),
                    )
                })
                .collect();
            assert!(client.batch(&renewals).iter().all(|&c| c == 200));
        }
        resident.push(resident_bytes());
    }
    let mb = |r: u64| r as f64 / 1e6;
    let all: Vec<String> = resident.iter().map(|&r| format!("{:.1}", mb(r))).collect();
    println!("resident MB after each wave: {}", all.join(" "));
    // The first two waves warm up the allocator and the server. Each wave
    // after them left about 1 MB behind while every deletion and shorter
    // TTL left an expiry item queued for an hour; now the six together
    // leave a few hundred KB.
    let grown = mb(resident[7]) - mb(resident[1]);
    assert!(
        grown < 2.0,
        "resident memory grew by {grown:.1} MB over six waves; MB after each: {}",
        all.join(" ")
    );
    assert_bounded(server.registry(), "after eight waves over HTTP");
    server.shutdown().unwrap();
}
