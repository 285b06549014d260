//! The Consul-compatible read API under `/v1/`: its JSON shapes, blocking
//! queries on the registry's long-poll, auth, and py-consul driving it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use regcenter::RegistryServer;
use serde_json::json;

use crate::common::{Raw, parse, put_weighted, raw, wait_until};

fn index(r: &Raw) -> u64 {
    r.header("X-Consul-Index")
        .unwrap_or_else(|| {
            panic!(
                "no X-Consul-Index in {} {:?}: {}",
                r.status,
                r.headers,
                r.text()
            )
        })
        .parse()
        .unwrap()
}

/// One GET read for up to a minute: for blocking queries.
fn get_blocking(addr: SocketAddr, path: &str) -> Raw {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // One write: a head sent in pieces is what a slow sender does.
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read the answer");
    parse(&buf)
}

fn get(s: &RegistryServer, path: &str) -> Raw {
    let r = raw(s.local_addr(), "GET", path, &[]);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert!(index(&r) >= 1, "X-Consul-Index is never 0");
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("0"));
    r
}

fn sample() -> RegistryServer {
    let s = RegistryServer::start_local().unwrap();
    put_weighted(
        &s,
        "arith",
        "tcp@10.0.0.1:7001",
        3,
        &[("zone", "eu"), ("tags", "b,a,,b")],
    );
    put_weighted(&s, "arith", "http@[::1]:7002", 1, &[]);
    put_weighted(&s, "arith", "unix@/run/x.sock", 1, &[]);
    put_weighted(&s, "", "tcp@10.0.0.3:7003", 1, &[("tags", "c")]);
    put_weighted(&s, "sockets", "unix@/run/y.sock", 1, &[]);
    s
}

#[test]
fn agent_self_names_the_datacenter_and_node_in_objects_only() {
    let s = RegistryServer::start_local().unwrap();
    let r = get(&s, "/v1/agent/self");
    let v = r.json();
    assert_eq!(v["Config"]["Datacenter"], "dc1");
    assert_eq!(v["Config"]["NodeName"], "regcenter");
    for (k, val) in v.as_object().expect("an object") {
        assert!(val.is_object(), "agent/self {k} is not an object: {val}");
    }
}

#[test]
fn catalog_services_lists_services_with_their_tags() {
    let s = RegistryServer::start_local().unwrap();
    let r = get(&s, "/v1/catalog/services");
    assert_eq!(r.json(), json!({}));
    assert_eq!(index(&r), 1, "an empty registry still answers index 1");
    let s = sample();
    let r = get(&s, "/v1/catalog/services");
    // "sockets" has no proto@host:port instance: no Consul service.
    assert_eq!(r.json(), json!({"arith": ["a", "b"], "~default": ["c"]}));
    assert_eq!(index(&r), s.registry().counter() + 1);
}

#[test]
fn catalog_service_maps_each_instance() {
    let s = sample();
    let r = get(&s, "/v1/catalog/service/arith");
    assert_eq!(index(&r), s.registry().index("arith") + 1);
    let v = r.json();
    let list = v.as_array().expect("a list");
    assert_eq!(list.len(), 2, "{v}");
    let i = list
        .iter()
        .find(|i| i["ServicePort"] == 7001)
        .expect("the first");
    assert_eq!(i["ServiceName"], "arith");
    assert_eq!(i["ServiceID"], "arith/tcp@10.0.0.1:7001");
    assert_eq!(i["ServiceAddress"], "10.0.0.1");
    assert_eq!(i["ServiceTags"], json!(["a", "b"]));
    assert_eq!(i["ServiceMeta"], json!({"zone": "eu", "tags": "b,a,,b"}));
    assert_eq!(i["ServiceWeights"], json!({"Passing": 3, "Warning": 1}));
    assert_eq!(i["Node"], "regcenter");
    assert_eq!(i["Address"], "127.0.0.1");
    assert_eq!(i["Datacenter"], "dc1");
    let v6 = list.iter().find(|i| i["ServicePort"] == 7002).unwrap();
    assert_eq!(v6["ServiceAddress"], "::1");
    assert_eq!(v6["ServiceTags"], json!([]));
    assert_eq!(v6["ServiceMeta"], json!({}));

    let r = get(&s, "/v1/catalog/service/~default");
    assert_eq!(r.json()[0]["ServiceAddress"], "10.0.0.3");
    let r = get(&s, "/v1/catalog/service/%7Edefault");
    assert_eq!(r.json()[0]["ServiceName"], "~default");
    let r = get(&s, "/v1/catalog/service/nope");
    assert_eq!(r.json(), json!([]));
    assert_eq!(index(&r), s.registry().counter() + 1);
}

#[test]
fn health_service_answers_entries_with_node_service_and_checks() {
    let s = sample();
    for path in [
        "/v1/health/service/arith",
        "/v1/health/service/arith?passing",
        "/v1/health/service/arith?passing=1&dc=dc1&stale=",
    ] {
        let r = get(&s, path);
        assert_eq!(index(&r), s.registry().index("arith") + 1);
        let v = r.json();
        let list = v.as_array().expect("a list");
        assert_eq!(list.len(), 2, "{path}: {v}");
        let e = list
            .iter()
            .find(|e| e["Service"]["Port"] == 7001)
            .expect("the first");
        assert_eq!(e["Node"]["Node"], "regcenter");
        assert_eq!(e["Node"]["Datacenter"], "dc1");
        assert!(e["Node"]["Address"].is_string());
        assert_eq!(e["Service"]["ID"], "arith/tcp@10.0.0.1:7001");
        assert_eq!(e["Service"]["Service"], "arith");
        assert_eq!(e["Service"]["Address"], "10.0.0.1");
        assert_eq!(e["Service"]["Tags"], json!(["a", "b"]));
        assert_eq!(e["Service"]["Meta"]["zone"], "eu");
        assert_eq!(e["Service"]["Weights"], json!({"Passing": 3, "Warning": 1}));
        let checks = e["Checks"].as_array().expect("checks");
        assert!(!checks.is_empty());
        assert!(
            checks.iter().all(|c| c["Status"] == "passing"),
            "{checks:?}"
        );
    }
    let r = get(&s, "/v1/health/service/nope?passing");
    assert_eq!(r.json(), json!([]));
}

#[test]
fn unknown_paths_writes_and_unsupported_filters_are_refused_with_a_reason() {
    let s = RegistryServer::start_local().unwrap();
    let a = s.local_addr();
    let r = raw(a, "GET", "/v1/kv/config", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("/v1/kv/config"), "{}", r.text());
    for (method, path) in [
        ("PUT", "/v1/agent/service/register"),
        ("PUT", "/v1/catalog/register"),
        ("POST", "/v1/catalog/services"),
        ("DELETE", "/v1/health/service/arith"),
    ] {
        let r = raw(a, method, path, &[]);
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("Allow"), Some("GET"));
        assert!(r.text().contains("read-only"), "{}", r.text());
    }
    for path in [
        "/v1/health/service/arith?tag=a",
        "/v1/catalog/service/arith?filter=x",
        "/v1/catalog/services?node-meta=a:b",
        "/v1/catalog/services?index=abc",
        "/v1/catalog/services?index=1&wait=10",
    ] {
        let r = raw(a, "GET", path, &[]);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    let r = raw(a, "GET", "/v1/catalog/services?dc=dc2", &[]);
    assert_eq!(r.status, 500);
    assert!(r.text().contains("No path to datacenter"), "{}", r.text());
}

#[test]
fn queries_that_must_not_block_answer_at_once() {
    let s = sample();
    let a = s.local_addr();
    let now = s.registry().index("arith");
    let counter = s.registry().counter();
    for path in [
        // wait without index, as Prometheus' first call
        "/v1/health/service/arith?dc=dc1&stale=&wait=120000ms".to_string(),
        "/v1/catalog/services?wait=120000ms".to_string(),
        // zero and stale indexes
        "/v1/catalog/services?index=0&wait=2m".to_string(),
        format!("/v1/health/service/arith?index={now}&wait=2m"),
        // an index from before a restart (beyond the counter)
        format!("/v1/catalog/service/arith?index={}&wait=2m", counter + 2),
    ] {
        let r = get_blocking(a, &path);
        assert_eq!(r.status, 200, "{path}");
        assert!(index(&r) >= 1);
    }
    assert_eq!(s.parked(), 0);
}

/// Parks `path` on a thread and waits until it is parked.
fn park(s: &RegistryServer, path: String) -> thread::JoinHandle<Raw> {
    let a = s.local_addr();
    let before = s.parked();
    let t = thread::spawn(move || get_blocking(a, &path));
    wait_until(
        "the blocking query to park",
        Duration::from_secs(20),
        || s.parked() == before + 1,
    );
    t
}

#[test]
fn a_blocking_service_query_wakes_on_a_change_not_on_a_renewal() {
    let s = sample();
    let n = index(&get(&s, "/v1/health/service/arith"));
    let t = park(&s, format!("/v1/health/service/arith?index={n}&wait=30s"));
    // A renewal, and a change of another service, leave it parked: the
    // registry tells watchers before put_with returns.
    put_weighted(
        &s,
        "arith",
        "tcp@10.0.0.1:7001",
        3,
        &[("zone", "eu"), ("tags", "b,a,,b")],
    );
    put_weighted(&s, "other", "tcp@10.0.0.9:7009", 1, &[]);
    assert_eq!(s.parked(), 1, "woken by a renewal or another service");
    put_weighted(&s, "arith", "tcp@10.0.0.2:7002", 1, &[]);
    let r = t.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(index(&r) > n);
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(s.parked(), 0);

    // The catalog entry of one service blocks the same way.
    let n = index(&get(&s, "/v1/catalog/service/arith"));
    let t = park(&s, format!("/v1/catalog/service/arith?index={n}&wait=30s"));
    s.registry().remove("arith", "tcp@10.0.0.2:7002").unwrap();
    let r = t.join().unwrap();
    assert!(index(&r) > n);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
}

#[test]
fn a_blocking_catalog_query_wakes_on_any_service() {
    let s = sample();
    let n = index(&get(&s, "/v1/catalog/services"));
    let t = park(&s, format!("/v1/catalog/services?index={n}&wait=30s"));
    put_weighted(
        &s,
        "arith",
        "tcp@10.0.0.1:7001",
        3,
        &[("zone", "eu"), ("tags", "b,a,,b")],
    );
    assert_eq!(s.parked(), 1, "woken by a renewal");
    put_weighted(&s, "billing", "tcp@10.0.0.8:7008", 1, &[]);
    let r = t.join().unwrap();
    assert!(index(&r) > n);
    assert!(r.json().get("billing").is_some(), "{}", r.text());

    // Emptied out, the service is gone and the index still moves on.
    let n = index(&r);
    let t = park(&s, format!("/v1/catalog/services?index={n}&wait=30s"));
    s.registry().remove("billing", "tcp@10.0.0.8:7008").unwrap();
    let r = t.join().unwrap();
    assert!(index(&r) > n);
    assert!(r.json().get("billing").is_none());
}

#[test]
fn a_blocking_query_on_an_empty_registry_blocks_at_index_1() {
    let s = RegistryServer::start_local().unwrap();
    let n = index(&get(&s, "/v1/catalog/services"));
    assert_eq!(n, 1);
    let t = park(&s, "/v1/catalog/services?index=1&wait=30s".into());
    put_weighted(&s, "first", "tcp@10.0.0.1:1", 1, &[]);
    let r = t.join().unwrap();
    assert!(index(&r) > 1);
    assert_eq!(r.json(), json!({"first": []}));
}

#[test]
fn a_blocking_query_times_out_with_the_same_index() {
    let s = sample();
    let n = index(&get(&s, "/v1/catalog/service/arith"));
    let t = park(
        &s,
        format!("/v1/catalog/service/arith?index={n}&wait=100ms"),
    );
    let r = t.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(index(&r), n);
}

#[test]
fn reads_follow_protect_reads_with_either_token_header() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .token("s3cret-token")
        .protect_reads(true)
        .start()
        .unwrap();
    let a = s.local_addr();
    for path in [
        "/v1/agent/self",
        "/v1/catalog/services",
        "/v1/health/service/x",
    ] {
        assert_eq!(raw(a, "GET", path, &[]).status, 401, "{path}");
        let wrong = raw(a, "GET", path, &[("X-Consul-Token", "nope")]);
        assert_eq!(wrong.status, 401, "{path}");
        let r = raw(a, "GET", path, &[("X-Consul-Token", "s3cret-token")]);
        assert_eq!(r.status, 200, "{path}");
        let r = raw(a, "GET", path, &[("Authorization", "Bearer s3cret-token")]);
        assert_eq!(r.status, 200, "{path}");
    }
    let open = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .token("s3cret-token")
        .start()
        .unwrap();
    let r = raw(open.local_addr(), "GET", "/v1/catalog/services", &[]);
    assert_eq!(r.status, 200, "reads stay open without --protect-reads");
}

const PY_CONSUL: &str = r#"
import sys
import consul

c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
index, services = c.catalog.services()
assert services == {"arith": ["a", "b"], "~default": ["c"]}, services
assert int(index) >= 1, index

index, nodes = c.catalog.service("arith")
assert sorted(n["ServicePort"] for n in nodes) == [7001, 7002], nodes
first = [n for n in nodes if n["ServicePort"] == 7001][0]
assert first["ServiceAddress"] == "10.0.0.1", first
assert first["ServiceMeta"]["zone"] == "eu", first
assert first["ServiceWeights"]["Passing"] == 3, first

index, entries = c.health.service("arith", passing=True)
assert sorted(e["Service"]["Port"] for e in entries) == [7001, 7002], entries
assert all(e["Node"]["Node"] == "regcenter" for e in entries), entries

# Blocks until the test registers a third instance.
print("blocking", flush=True)
new_index, entries = c.health.service("arith", index=index, wait="30s", passing=True)
assert int(new_index) > int(index), (index, new_index)
assert sorted(e["Service"]["Port"] for e in entries) == [7001, 7002, 7004], entries
print("ok", flush=True)
"#;

#[test]
fn py_consul_reads_the_catalog_and_blocks_until_a_registration() {
    let has_consul = Command::new("python3")
        .args(["-c", "import consul"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_consul {
        assert!(
            std::env::var_os("CI").is_none(),
            "py-consul is missing under CI: .ci/run installs it (pip install py-consul)"
        );
        eprintln!(
            "SKIPPED py_consul_reads_the_catalog_and_blocks_until_a_registration: python3 with py-consul is not installed (pip install py-consul)"
        );
        return;
    }
    let s = sample();
    let mut script = Script(
        Command::new("python3")
            .args(["-c", PY_CONSUL])
            .arg(s.local_addr().port().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3"),
    );
    let mut parked = false;
    wait_until(
        "the script's blocking query to park, or the script to end",
        Duration::from_secs(40),
        || {
            parked = s.parked() == 1;
            parked || script.0.try_wait().ok().flatten().is_some()
        },
    );
    if parked {
        put_weighted(&s, "arith", "tcp@10.0.0.4:7004", 1, &[]);
    }
    let mut exited = None;
    wait_until(
        "the py-consul script to end",
        Duration::from_secs(60),
        || {
            exited = script.0.try_wait().ok().flatten();
            exited.is_some()
        },
    );
    let mut out = String::new();
    let mut err = String::new();
    let child = &mut script.0;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        parked,
        "the script's blocking query never parked:\n{out}\n{err}"
    );
    assert!(
        exited.is_some_and(|e| e.success()) && out.contains("ok"),
        "the py-consul script failed:\n{out}\n{err}"
    );
}

/// The script's process, killed by its PID if the test ends first.
struct Script(std::process::Child);

impl Drop for Script {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the child this test started, by its PID.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

/// The requests Prometheus' consul_sd sends with default settings
/// (discovery/consul/consul.go): agent/self for the datacenter, the
/// catalog without and then with an index, each service's health.
#[test]
fn the_requests_of_prometheus_consul_sd_find_every_target() {
    let s = sample();
    let dc = get(&s, "/v1/agent/self").json()["Config"]["Datacenter"].clone();
    assert_eq!(dc, "dc1");
    let q = "dc=dc1&stale=&wait=120000ms";
    let r = get(&s, &format!("/v1/catalog/services?{q}"));
    let catalog_index = index(&r);
    let services = r.json();
    let mut targets = Vec::new();
    for name in services.as_object().unwrap().keys() {
        let r = get(&s, &format!("/v1/health/service/{name}?{q}"));
        assert!(index(&r) >= 1);
        for e in r.json().as_array().unwrap() {
            assert!(e["Node"].is_object(), "every entry has a Node: {e}");
            targets.push(format!(
                "{}:{}",
                e["Service"]["Address"].as_str().unwrap(),
                e["Service"]["Port"]
            ));
        }
    }
    targets.sort();
    assert_eq!(targets, ["10.0.0.1:7001", "10.0.0.3:7003", "::1:7002"]);
    let t = park(
        &s,
        format!("/v1/catalog/services?{q}&index={catalog_index}"),
    );
    put_weighted(&s, "billing", "tcp@10.0.0.8:7008", 1, &[]);
    let r = t.join().unwrap();
    assert!(index(&r) > catalog_index);
    assert!(r.json().get("billing").is_some());
}
