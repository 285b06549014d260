//! The etcd backend against a real etcd on loopback (Debian's etcd-server).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regcenter::{
    Discovery, EtcdRegistration, EtcdRegistrationBuilder, RegistryDiscovery, SelectMode,
};

use crate::common::etcd::{self, Cluster as Etcd, agent};
use crate::common::wait_until;

fn registration(e: &Etcd, addr: &str, service: &str) -> EtcdRegistrationBuilder {
    EtcdRegistration::builder(&[&e.url()], addr)
        .service(service)
        .ttl(Duration::from_secs(2))
}

fn discovery(e: &Etcd, service: &str, watch: bool) -> RegistryDiscovery {
    RegistryDiscovery::etcd(&[&e.url()])
        .service(service)
        .refresh_period(if watch {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(50)
        })
        .timeout(Duration::from_millis(500))
        .watch(watch)
        .build()
        .unwrap()
}

#[test]
fn register_list_weights_and_metadata() {
    let Some(e) = etcd::start() else { return };
    let heavy = registration(&e, "tcp@heavy:1", "arith")
        .weight(3)
        .meta("zone", "eu")
        .start()
        .unwrap();
    let light = registration(&e, "tcp@light:1", "arith").start().unwrap();
    let d = discovery(&e, "arith", false);
    assert_eq!(d.get_all().unwrap(), ["tcp@heavy:1", "tcp@light:1"]);
    let picks: Vec<String> = (0..8)
        .map(|_| d.get(SelectMode::WeightedRoundRobin).unwrap())
        .collect();
    assert_eq!(
        picks.iter().filter(|p| *p == "tcp@heavy:1").count(),
        6,
        "{picks:?}"
    );
    // The value round-trips weight and metadata.
    let key = base64_encode(heavy.key());
    let v: serde_json::Value = agent()
        .post(&format!("{}/v3/kv/range", e.url()))
        .send(format!("{{\"key\":\"{key}\"}}"))
        .unwrap()
        .body_mut()
        .read_json_value();
    let value = String::from_utf8(base64_decode(v["kvs"][0]["value"].as_str().unwrap())).unwrap();
    let value: serde_json::Value = serde_json::from_str(&value).unwrap();
    assert_eq!(
        (value["weight"].as_u64(), value["meta"]["zone"].as_str()),
        (Some(3), Some("eu"))
    );
    heavy.stop().unwrap();
    light.stop().unwrap();
}

trait ReadJson {
    fn read_json_value(&mut self) -> serde_json::Value;
}

impl ReadJson for ureq::Body {
    fn read_json_value(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.read_to_string().unwrap()).unwrap()
    }
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn keep_alive_holds_past_several_ttls_and_stop_revokes_at_once() {
    let Some(e) = etcd::start() else { return };
    let reg = registration(&e, "tcp@kept:1", "svc").start().unwrap();
    let d = discovery(&e, "svc", false);
    // TTL 2 s, kept alive every ~0.67 s: 7 keep-alives span more than 2 TTLs.
    wait_until("7 keep-alives", Duration::from_secs(15), || {
        reg.beats() >= 7
    });
    assert_eq!(d.get_all().unwrap(), ["tcp@kept:1"]);
    reg.stop().unwrap();
    d.refresh().unwrap();
    assert!(d.get_all().unwrap().is_empty(), "revoked at once");
}

#[test]
fn a_registration_whose_process_dies_disappears_after_its_ttl() {
    let Some(e) = etcd::start() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_regcenter"))
        .args([
            "register",
            "--etcd",
            &e.url(),
            "--addr",
            "tcp@dies:1",
            "--ttl",
            "2s",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = discovery(&e, "", false);
    wait_until("the sidecar to register", Duration::from_secs(10), || {
        d.get_all().unwrap() == ["tcp@dies:1"]
    });
    let t = Instant::now();
    // SIGKILL: no chance to revoke.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until("the lease to expire", Duration::from_secs(10), || {
        d.get_all().unwrap().is_empty()
    });
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "gone after {:?}, before its TTL",
        t.elapsed()
    );
}

#[test]
fn watch_mode_sees_a_registration_and_a_removal_quickly() {
    let Some(e) = etcd::start() else { return };
    let d = discovery(&e, "w", true);
    assert!(d.get_all().unwrap().is_empty());
    let t = Instant::now();
    let reg = registration(&e, "tcp@w:1", "w").start().unwrap();
    wait_until("the registration to arrive", Duration::from_secs(5), || {
        d.get_all().unwrap() == ["tcp@w:1"]
    });
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let t = Instant::now();
    reg.stop().unwrap();
    wait_until("the removal to arrive", Duration::from_secs(5), || {
        d.get_all().unwrap().is_empty()
    });
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let t = Instant::now();
    d.stop().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn after_etcd_loses_its_data_the_registration_comes_back_and_discovery_recovers() {
    let Some(mut e) = etcd::start() else { return };
    let reg = registration(&e, "tcp@back:1", "r").start().unwrap();
    let d = discovery(&e, "r", true);
    assert_eq!(d.get_all().unwrap(), ["tcp@back:1"]);
    e.restart(true);
    // The keep-alive finds its lease gone, grants a new one and puts again;
    // the watching discovery reconnects and lists it.
    wait_until(
        "the registration to come back",
        Duration::from_secs(15),
        || d.get_all().unwrap() == ["tcp@back:1"] && d.index().is_some_and(|i| i < 10),
    );
    reg.stop().unwrap();
}

#[test]
fn discovery_keeps_its_list_while_etcd_is_down() {
    let Some(mut e) = etcd::start() else { return };
    let reg = registration(&e, "tcp@stay:1", "k")
        .ttl(Duration::from_secs(30))
        .start()
        .unwrap();
    let d = discovery(&e, "k", false);
    assert_eq!(d.get_all().unwrap(), ["tcp@stay:1"]);
    e.stop();
    for _ in 0..5 {
        assert_eq!(d.get(SelectMode::Random).unwrap(), "tcp@stay:1");
    }
    assert!(
        d.refresh().is_err(),
        "an explicit refresh reports the outage"
    );
    e.restart(false);
    drop(reg);
}

#[test]
fn a_prefix_puts_the_key_under_it_and_only_discovery_with_it_sees_it() {
    let Some(e) = etcd::start() else { return };
    let reg = registration(&e, "tcp@elsewhere:1", "p")
        .prefix("/other/")
        .start()
        .unwrap();
    assert_eq!(reg.key(), "/other/p/tcp@elsewhere:1");
    let under = RegistryDiscovery::etcd(&[&e.url()])
        .etcd_prefix("/other")
        .service("p")
        .build()
        .unwrap();
    assert_eq!(under.get_all().unwrap(), ["tcp@elsewhere:1"]);
    let default = discovery(&e, "p", false);
    assert!(
        default.get_all().unwrap().is_empty(),
        "not under /regcenter"
    );
    reg.stop().unwrap();
}
