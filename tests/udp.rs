//! Renewals over UDP: the datagram format as the README gives it, what the
//! registry answers to every kind of datagram, and heartbeats that renew
//! by datagram, lose them, and fall back to HTTP.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use regcenter::{Heartbeat, HeartbeatState, PutOptions, RegistryServer, Status};
use sha2::Sha256;

use crate::common::{lasting_builder, raw, registry_on, wait_until};

const P: &str = "/myRPC/registry";
const A: &str = "tcp@127.0.0.1:7001";
const LONG: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A renewal datagram exactly as the README lays it out.
fn datagram(service: &str, addr: &str, stamp: u64, key: Option<&[u8]>) -> Vec<u8> {
    let mut d = b"RCHB".to_vec();
    d.push(1);
    d.push(u8::from(key.is_some()));
    d.extend_from_slice(&stamp.to_be_bytes());
    d.push(service.len() as u8);
    d.push(addr.len() as u8);
    d.extend_from_slice(service.as_bytes());
    d.extend_from_slice(addr.as_bytes());
    if let Some(key) = key {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(&d);
        d.extend_from_slice(&mac.finalize().into_bytes());
    }
    d
}

/// A client socket on 127.0.0.1 sending to the registry's UDP port.
struct Client {
    socket: UdpSocket,
}

impl Client {
    fn to(server: &RegistryServer) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .connect(server.udp_addr().expect("UDP is on"))
            .unwrap();
        // Generous: a reply is waited for only when one must come, and a
        // missing one is told by the reply to a later datagram (loopback
        // keeps them in order).
        socket.set_read_timeout(Some(LONG / 4)).unwrap();
        Client { socket }
    }

    /// Sends `d` and returns the reply, `None` when none came in 5 s.
    fn ask(&self, d: &[u8]) -> Option<Vec<u8>> {
        self.socket.send(d).unwrap();
        self.reply()
    }

    fn reply(&self) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(_) => None,
        }
    }

    /// The code of the reply to `d`, checking the reply's shape: never
    /// larger than the request, the magic, the version, the stamp echoed.
    fn code(&self, d: &[u8]) -> Option<u8> {
        let r = self.ask(d)?;
        assert!(
            r.len() <= d.len(),
            "a {}-byte reply to {} bytes",
            r.len(),
            d.len()
        );
        assert_eq!(r.len(), 14, "{r:?}");
        assert_eq!(&r[..5], b"RCHB\x01", "{r:?}");
        assert_eq!(r[6..14], d[6..14], "the stamp is echoed");
        Some(r[5])
    }
}

const RENEWED: Option<u8> = Some(0);
const UNKNOWN: Option<u8> = Some(1);
const REFUSED: Option<u8> = Some(2);

fn renewals(server: &RegistryServer) -> u64 {
    server.registry().stats().renewals
}

fn samples(server: &RegistryServer) -> HashMap<String, f64> {
    let r = raw(server.local_addr(), "GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn udp_count(server: &RegistryServer, result: &str) -> f64 {
    samples(server)
        .get(&format!(
            "regcenter_udp_datagrams_total{{result=\"{result}\"}}"
        ))
        .copied()
        .unwrap_or_else(|| panic!("no UDP counter for {result}"))
}

fn http_posts(server: &RegistryServer) -> f64 {
    samples(server)
        .get("regcenter_requests_total{method=\"POST\",status=\"200\"}")
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn a_datagram_renews_a_known_entry_and_keeps_what_it_registered_with() {
    let server = lasting_builder().start().unwrap();
    let reg = server.registry();
    let opts = PutOptions::new()
        .ttl(Duration::from_secs(30))
        .weight(3)
        .meta("zone", "eu")
        .status(Status::Draining);
    reg.put_with("arith", A, &opts).unwrap();
    let index = reg.index("arith");
    let before = renewals(&server);
    let c = Client::to(&server);
    assert_eq!(c.code(&datagram("arith", A, now_ms(), None)), RENEWED);
    assert_eq!(renewals(&server), before + 1);
    assert_eq!(reg.index("arith"), index, "a renewal wakes no watcher");
    let (_, e) = reg.instances("arith");
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].ttl,
        Duration::from_secs(30),
        "its own TTL, not the default"
    );
    assert_eq!((e[0].weight, e[0].status), (3, Status::Draining));
    assert_eq!(e[0].meta.get("zone").map(String::as_str), Some("eu"));
    // The default service too (an empty name).
    reg.put("", A).unwrap();
    assert_eq!(c.code(&datagram("", A, now_ms(), None)), RENEWED);
}

#[test]
fn an_unknown_entry_is_answered_unknown_and_never_created() {
    let server = lasting_builder().start().unwrap();
    let c = Client::to(&server);
    assert_eq!(c.code(&datagram("arith", A, now_ms(), None)), UNKNOWN);
    // Another service than the one it is registered in is unknown too.
    server.registry().put("other", A).unwrap();
    assert_eq!(c.code(&datagram("arith", A, now_ms(), None)), UNKNOWN);
    assert!(server.registry().alive("arith").is_empty());
    assert_eq!(server.registry().len(), 1);
}

#[test]
fn a_datagram_of_every_wrong_size_or_shape_renews_nothing() {
    let server = lasting_builder().start().unwrap();
    let reg = server.registry();
    reg.put("arith", A).unwrap();
    let c = Client::to(&server);
    let good = datagram("arith", A, now_ms(), None);
    let mut bad: Vec<(String, Vec<u8>)> = Vec::new();
    for n in 0..good.len() {
        bad.push((format!("truncated to {n}"), good[..n].to_vec()));
    }
    let mut longer = good.clone();
    longer.push(b'x');
    bad.push(("one byte too many".into(), longer));
    bad.push(("oversized 432".into(), vec![b'R'; 432]));
    let mut huge = good.clone();
    huge.resize(4000, 0);
    bad.push(("oversized 4000".into(), huge));
    let mut tagged_without_tag = good.clone();
    tagged_without_tag[5] = 1;
    bad.push(("flagged tag missing".into(), tagged_without_tag));
    let mut flags = good.clone();
    flags[5] = 0x80;
    bad.push(("unknown flags".into(), flags));
    let mut version = good.clone();
    version[4] = 2;
    bad.push(("another version".into(), version));
    let mut magic = good.clone();
    magic[0] = b'X';
    bad.push(("another magic".into(), magic));
    bad.push(("no address".into(), {
        let mut d = datagram("arith", "", now_ms(), None);
        d[15] = 0;
        d
    }));
    let mut long_service = datagram(&"s".repeat(129), A, now_ms(), None);
    long_service[14] = 129;
    bad.push(("a 129-byte service".into(), long_service));
    bad.push((
        "a bad service name".into(),
        datagram("a/b", A, now_ms(), None),
    ));
    bad.push((
        "an address with a comma".into(),
        datagram("arith", "tcp@a,b", now_ms(), None),
    ));
    let mut not_utf8 = good.clone();
    let at = not_utf8.len() - 1;
    not_utf8[at] = 0xff;
    bad.push(("an address not UTF-8".into(), not_utf8));
    let before = renewals(&server);
    let mut probes = 0;
    for (what, d) in &bad {
        if d.len() >= 14 && &d[..5] == b"RCHB\x01" {
            let r = c.ask(d).unwrap_or_else(|| panic!("{what}: no reply"));
            assert!(r.len() <= d.len(), "{what}: a {}-byte reply", r.len());
            assert_eq!(r.len(), 14, "{what}");
            assert_eq!(r[5], 2, "{what}: refused");
        } else {
            // Unanswered: the next reply is the probe's, sent after it.
            c.socket.send(d).unwrap();
            let probe = datagram("arith", A, 1_000 + probes, None);
            probes += 1;
            let r = c.ask(&probe).expect("the probe's reply");
            assert_eq!(r[6..14], probe[6..14], "{what} was answered");
            assert_eq!(r[5], 0);
        }
    }
    assert_eq!(
        renewals(&server),
        before + probes,
        "only the probes renewed"
    );
    assert!(udp_count(&server, "malformed") >= bad.len() as f64);
    assert_eq!(udp_count(&server, "renewed"), probes as f64);
    // The thread serves on.
    assert_eq!(c.code(&good), RENEWED);
}

#[test]
fn with_a_token_only_a_fresh_datagram_tagged_with_it_renews() {
    let server = lasting_builder().token("s3cret").start().unwrap();
    server.registry().put("arith", A).unwrap();
    let c = Client::to(&server);
    let key: &[u8] = b"s3cret";
    let t = now_ms();
    let before = renewals(&server);
    assert_eq!(c.code(&datagram("arith", A, t, None)), REFUSED, "no tag");
    assert_eq!(
        c.code(&datagram("arith", A, t, Some(b"wrong"))),
        REFUSED,
        "a wrong token"
    );
    let mut forged = datagram("arith", A, t, Some(key));
    forged[6] ^= 1; // the stamp changed after tagging
    assert_eq!(c.code(&forged), REFUSED, "a tag over other bytes");
    assert_eq!(
        c.code(&datagram("arith", A, t - 60_000, Some(key))),
        REFUSED,
        "recorded a minute ago"
    );
    assert_eq!(
        c.code(&datagram("arith", A, t + 60_000, Some(key))),
        REFUSED,
        "a minute ahead"
    );
    assert_eq!(renewals(&server), before);
    let good = datagram("arith", A, t, Some(key));
    assert_eq!(c.code(&good), RENEWED);
    assert_eq!(
        c.code(&good),
        REFUSED,
        "a duplicate, or a replay in the window"
    );
    assert_eq!(
        c.code(&datagram("arith", A, t - 1, Some(key))),
        REFUSED,
        "an older one arriving late"
    );
    assert_eq!(c.code(&datagram("arith", A, t + 1, Some(key))), RENEWED);
    assert_eq!(renewals(&server), before + 2);
    // Unknown only to those who hold the token.
    assert_eq!(c.code(&datagram("other", A, t, None)), REFUSED);
    assert_eq!(c.code(&datagram("other", A, t + 2, Some(key))), UNKNOWN);
    assert!(udp_count(&server, "refused") >= 8.0);
}

#[test]
fn refusals_are_answered_at_most_a_hundred_a_second() {
    let server = lasting_builder().token("s3cret").start().unwrap();
    let c = Client::to(&server);
    c.socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let d = datagram("arith", A, now_ms(), None);
    for _ in 0..400 {
        c.socket.send(&d).unwrap();
    }
    let mut replies = 0;
    while c.reply().is_some() {
        replies += 1;
        assert!(replies <= 400, "more replies than requests");
    }
    // Two seconds at most were touched while sending.
    assert!((1..=200).contains(&replies), "{replies} refusals answered");
}

#[test]
fn datagrams_count_by_result_and_renewals_with_http_ones() {
    let server = lasting_builder().start().unwrap();
    server.registry().put("arith", A).unwrap();
    let c = Client::to(&server);
    assert_eq!(c.code(&datagram("arith", A, now_ms(), None)), RENEWED);
    assert_eq!(c.code(&datagram("arith", A, now_ms(), None)), RENEWED);
    assert_eq!(c.code(&datagram("nope", A, now_ms(), None)), UNKNOWN);
    assert_eq!(
        c.ask(b"RCHB\x01\x00short-datagram"),
        Some(b"RCHB\x01\x02short-da".to_vec())
    );
    let s = samples(&server);
    let get = |k: &str| s.get(k).copied().unwrap_or(-1.0);
    assert_eq!(
        get("regcenter_udp_datagrams_total{result=\"renewed\"}"),
        2.0
    );
    assert_eq!(
        get("regcenter_udp_datagrams_total{result=\"unknown\"}"),
        1.0
    );
    assert_eq!(
        get("regcenter_udp_datagrams_total{result=\"refused\"}"),
        0.0
    );
    assert_eq!(
        get("regcenter_udp_datagrams_total{result=\"malformed\"}"),
        1.0
    );
    assert_eq!(get("regcenter_renewals_total"), 2.0, "UDP renewals count");
    let r = raw(
        server.local_addr(),
        "POST",
        "/myRPC/registry/arith",
        &[("X-Myrpc-Server", A)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        samples(&server)["regcenter_renewals_total"],
        3.0,
        "and HTTP ones"
    );
}

#[test]
fn post_answers_advertise_the_udp_port_unless_it_is_off() {
    let server = lasting_builder().start().unwrap();
    let port = server.udp_addr().unwrap().port();
    assert_eq!(
        port,
        server.local_addr().port(),
        "the same number by default"
    );
    let r = raw(server.local_addr(), "POST", P, &[("X-Myrpc-Server", A)]);
    assert_eq!(r.header("x-myrpc-udp"), Some(port.to_string().as_str()));
    let g = raw(server.local_addr(), "GET", P, &[]);
    assert_eq!(g.header("x-myrpc-udp"), None, "only POST answers");
    let off = lasting_builder().udp(false).start().unwrap();
    assert!(off.udp_addr().is_none());
    let r = raw(off.local_addr(), "POST", P, &[("X-Myrpc-Server", A)]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-myrpc-udp"), None);
}

/// What a [`Forwarder`] does to the datagrams it passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Drops every datagram: UDP blocked on the way.
    DropAll,
    /// Drops every other request.
    DropHalf,
    /// Sends every request twice and every reply twice.
    Duplicate,
    /// Holds each request back until the next one, then sends both, the
    /// later first.
    Reorder,
}

/// A UDP forwarder on 127.0.0.1 in front of a registry's UDP port, the
/// port the registry advertises (`udp_advertised_port`).
struct Forwarder {
    addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Forwarder {
    /// Forwards to the UDP port set with `upstream`, once set.
    fn start() -> Forwarder {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tick = Some(Duration::from_millis(20));
        front.set_read_timeout(tick).unwrap();
        back.set_read_timeout(tick).unwrap();
        let addr = front.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let (m, s, f, cl) = (
            mode.clone(),
            stop.clone(),
            forwarded.clone(),
            client.clone(),
        );
        let to = upstream.clone();
        let up = thread::Builder::new()
            .name("udp-forward-up".into())
            .spawn(move || {
                let mut held: Option<Vec<u8>> = None;
                let mut n = 0u64;
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::SeqCst) {
                    let Ok((len, from)) = front.recv_from(&mut buf) else {
                        continue;
                    };
                    *cl.lock() = Some(from);
                    let d = buf[..len].to_vec();
                    n += 1;
                    let mode = *m.lock();
                    let Some(up) = *to.lock() else { continue };
                    let send = |d: &[u8]| {
                        let _ = back.send_to(d, up);
                        f.fetch_add(1, Ordering::SeqCst);
                    };
                    match mode {
                        Mode::Pass => send(&d),
                        Mode::DropAll => {}
                        Mode::DropHalf if n.is_multiple_of(2) => {}
                        Mode::DropHalf => send(&d),
                        Mode::Duplicate => {
                            send(&d);
                            send(&d);
                        }
                        Mode::Reorder => match held.take() {
                            Some(earlier) => {
                                send(&d);
                                send(&earlier);
                            }
                            None => held = Some(d),
                        },
                    }
                }
            })
            .unwrap();
        let (m, s) = (mode.clone(), stop.clone());
        let down = thread::Builder::new()
            .name("udp-forward-down".into())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::SeqCst) {
                    let Ok((len, _)) = back2.recv_from(&mut buf) else {
                        continue;
                    };
                    let Some(to) = *client.lock() else { continue };
                    match *m.lock() {
                        Mode::DropAll => {}
                        Mode::Duplicate => {
                            let _ = front2.send_to(&buf[..len], to);
                            let _ = front2.send_to(&buf[..len], to);
                        }
                        _ => {
                            let _ = front2.send_to(&buf[..len], to);
                        }
                    }
                }
            })
            .unwrap();
        Forwarder {
            addr,
            upstream,
            mode,
            stop,
            forwarded,
            threads: vec![up, down],
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A registry whose entries live 900 ms (heartbeats beat every 300 ms and
/// wait 150 ms for a reply, so two lost datagrams and an HTTP beat fit in
/// a TTL with room for a busy machine), receiving UDP on a free port and
/// advertising the forwarder's.
fn behind_forwarder() -> (RegistryServer, Forwarder) {
    let fwd = Forwarder::start();
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_millis(900))
        .min_ttl(Duration::from_millis(50))
        .threads(2)
        .udp_port(0)
        .udp_advertised_port(fwd.addr.port())
        .start()
        .unwrap();
    *fwd.upstream.lock() = server.udp_addr();
    (server, fwd)
}

fn registered(hb: &Heartbeat) -> bool {
    matches!(hb.state(), HeartbeatState::Registered { .. })
}

#[test]
fn a_heartbeat_renews_over_udp_when_the_registry_advertises_it() {
    let server = registry_on("127.0.0.1:0");
    let hb = Heartbeat::builder(server.url(), A)
        .service("arith")
        .weight(4)
        .start()
        .unwrap();
    wait_until("ten UDP renewals", LONG, || {
        udp_count(&server, "renewed") >= 10.0
    });
    // Most beats went by datagram (a reply late on a busy machine may
    // send one over HTTP, and a few after it).
    let (posts, renewed) = (http_posts(&server), udp_count(&server, "renewed"));
    assert!(
        posts * 2.0 < renewed,
        "{posts} POSTs for {renewed} UDP renewals"
    );
    assert!(registered(&hb), "{:?}", hb.state());
    assert!(hb.beats() >= 10, "UDP beats count as beats: {}", hb.beats());
    assert_eq!(server.registry().instances("arith").1[0].weight, 4);
    // A drain goes over HTTP, at once, and the beats after it keep it.
    hb.drain().unwrap();
    let (_, e) = server.registry().instances("arith");
    assert_eq!(e[0].status, Status::Draining);
    let renewed = udp_count(&server, "renewed");
    wait_until("UDP renewals after the drain", LONG, || {
        udp_count(&server, "renewed") >= renewed + 5.0
    });
    assert_eq!(
        server.registry().instances("arith").1[0].status,
        Status::Draining
    );
    hb.stop().unwrap();
    assert!(server.registry().is_empty(), "stop deregisters over HTTP");
}

#[test]
fn a_heartbeat_with_a_token_tags_its_datagrams() {
    let server = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_millis(300))
        .min_ttl(Duration::from_millis(50))
        .threads(2)
        .token("s3cret")
        .start()
        .unwrap();
    let hb = Heartbeat::builder(server.url(), A)
        .token("s3cret")
        .start()
        .unwrap();
    wait_until("five UDP renewals", LONG, || {
        udp_count(&server, "renewed") >= 5.0
    });
    assert_eq!(udp_count(&server, "refused"), 0.0);
    assert!(registered(&hb));
}

#[test]
fn a_heartbeat_falls_back_to_http_when_udp_is_blocked() {
    let (server, fwd) = behind_forwarder();
    fwd.set(Mode::DropAll);
    let hb = Heartbeat::builder(server.url(), A).start().unwrap();
    let posts = http_posts(&server);
    wait_until("beats over HTTP", LONG, || {
        http_posts(&server) >= posts + 6.0
    });
    assert!(fwd.forwarded.load(Ordering::SeqCst) == 0);
    assert_eq!(server.registry().alive(""), [A], "never expired");
    assert!(registered(&hb), "{:?}", hb.state());
    assert_eq!(udp_count(&server, "renewed"), 0.0);
    // Unblocked, the heartbeat goes back to UDP in time.
    fwd.set(Mode::Pass);
    wait_until("UDP renewals again", LONG, || {
        udp_count(&server, "renewed") >= 3.0
    });
    assert_eq!(server.registry().alive(""), [A]);
}

#[test]
fn lost_duplicated_and_reordered_datagrams_keep_the_server_registered() {
    let (server, fwd) = behind_forwarder();
    let hb = Heartbeat::builder(server.url(), A).start().unwrap();
    for mode in [Mode::DropHalf, Mode::Duplicate, Mode::Reorder] {
        fwd.set(mode);
        let renewed = udp_count(&server, "renewed");
        wait_until(&format!("UDP renewals with {mode:?}"), LONG, || {
            udp_count(&server, "renewed") >= renewed + 6.0
        });
        assert_eq!(server.registry().alive(""), [A], "{mode:?}");
        assert!(registered(&hb), "{mode:?}: {:?}", hb.state());
    }
    // Every expiry is counted: none happened.
    assert_eq!(server.registry().stats().expiries, 0);
}

#[test]
fn an_unknown_entry_makes_the_heartbeat_register_again_over_http() {
    let server = registry_on("127.0.0.1:0");
    let hb = Heartbeat::builder(server.url(), A)
        .service("arith")
        .weight(9)
        .meta("zone", "eu")
        .start()
        .unwrap();
    wait_until("UDP renewals", LONG, || {
        udp_count(&server, "renewed") >= 2.0
    });
    assert!(server.registry().remove("arith", A).unwrap());
    wait_until("registered again", LONG, || {
        server.registry().alive("arith") == [A]
    });
    let (_, e) = server.registry().instances("arith");
    assert_eq!(e[0].weight, 9, "the HTTP registration carries the weight");
    assert_eq!(e[0].meta.get("zone").map(String::as_str), Some("eu"));
    assert!(udp_count(&server, "unknown") >= 1.0);
    let renewed = udp_count(&server, "renewed");
    wait_until("UDP renewals after it", LONG, || {
        udp_count(&server, "renewed") >= renewed + 3.0
    });
    assert!(registered(&hb));
}

#[test]
fn a_restarted_registry_gets_the_server_back_and_renewals_over_udp() {
    let first = registry_on("127.0.0.1:0");
    let addr = first.local_addr();
    let hb = Heartbeat::builder(first.url(), A).start().unwrap();
    wait_until("UDP renewals", LONG, || udp_count(&first, "renewed") >= 2.0);
    first.shutdown().unwrap();
    let second = registry_on(&addr.to_string());
    wait_until("the server back", LONG, || {
        second.registry().alive("") == [A]
    });
    wait_until("UDP renewals at the new registry", LONG, || {
        udp_count(&second, "renewed") >= 3.0
    });
    assert!(registered(&hb), "{:?}", hb.state());
}

#[test]
fn bench_renew_udp_renews_by_datagram() {
    let server = lasting_builder().start().unwrap();
    let report = regcenter::loadgen::LoadOptions::new(server.url())
        .op(regcenter::loadgen::Op::RenewUdp)
        .clients(4)
        .servers(10)
        .max_requests(500)
        .duration(LONG)
        .run()
        .unwrap();
    assert_eq!(report.requests, 500, "{report}");
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(udp_count(&server, "renewed"), 500.0);
    assert!(
        server.registry().is_empty(),
        "the servers were removed after"
    );
    // With a token, datagrams carry its tag.
    let guarded = lasting_builder().token("s3cret").start().unwrap();
    let report = regcenter::loadgen::LoadOptions::new(guarded.url())
        .op(regcenter::loadgen::Op::RenewUdp)
        .token(Some("s3cret".into()))
        .clients(2)
        .servers(100)
        .max_requests(100)
        .duration(LONG)
        .run()
        .unwrap();
    assert_eq!(report.requests, 100, "{report}");
    assert_eq!(udp_count(&guarded, "refused"), 0.0);
    // A registry without UDP says so.
    let off = lasting_builder().udp(false).start().unwrap();
    let e = regcenter::loadgen::LoadOptions::new(off.url())
        .op(regcenter::loadgen::Op::RenewUdp)
        .servers(1)
        .run()
        .unwrap_err();
    assert!(e.to_string().contains("X-Myrpc-Udp"), "{e}");
}

#[test]
fn serve_takes_a_udp_port_or_none_but_not_both() {
    let out = crate::common::process::regcenter(&["serve", "--udp", "0", "--no-udp"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--udp and --no-udp"), "{err}");
    let out = crate::common::process::regcenter(&["serve", "--udp", "70000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 to 65535"));
    let help = crate::common::process::regcenter(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--udp PORT") && help.contains("--no-udp"),
        "{help}"
    );
}

#[test]
fn heartbeats_renewing_by_datagram_hold_no_connection_of_the_registry() {
    let server = registry_on("127.0.0.1:0");
    let hbs: Vec<Heartbeat> = (0..20)
        .map(|i| {
            Heartbeat::builder(server.url(), &format!("tcp@127.0.0.1:{}", 7001 + i))
                .start()
                .unwrap()
        })
        .collect();
    wait_until("UDP renewals of every server", LONG, || {
        udp_count(&server, "renewed") >= 60.0
    });
    // The scrape's own connection is the only one left (the guard counts
    // every 40 ms).
    wait_until("the heartbeats' connections closed", LONG, || {
        samples(&server)["regcenter_open_connections"] <= 1.0
    });
    assert_eq!(server.registry().len(), 20);
    let threads = crate::common::threads_named(&format!("rc{}-", server.local_addr().port()));
    assert!(threads < 20, "{threads} registry threads for 20 servers");
    drop(hbs);
}

#[test]
fn a_burst_from_several_senders_gets_each_its_own_replies() {
    let server = lasting_builder().start().unwrap();
    server.registry().put("arith", A).unwrap();
    let clients: Vec<Client> = (0..3).map(|_| Client::to(&server)).collect();
    // Interleaved, without waiting: the registry takes them in batches.
    for n in 0..40u64 {
        for (i, c) in clients.iter().enumerate() {
            let stamp = (i as u64) << 32 | n;
            c.socket.send(&datagram("arith", A, stamp, None)).unwrap();
        }
    }
    for (i, c) in clients.iter().enumerate() {
        let mut stamps = Vec::new();
        while let Some(r) = c.reply() {
            assert_eq!(r.len(), 14);
            assert_eq!(r[5], 0, "renewed");
            stamps.push(u64::from_be_bytes(r[6..14].try_into().unwrap()));
            if stamps.len() == 40 {
                break;
            }
        }
        stamps.sort_unstable();
        let mine: Vec<u64> = (0..40).map(|n| (i as u64) << 32 | n).collect();
        assert_eq!(stamps, mine, "sender {i}");
    }
    assert_eq!(udp_count(&server, "renewed"), 120.0);
}
