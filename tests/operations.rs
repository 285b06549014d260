//! What an operator sees: /metrics, the status page (in a real browser).

use std::collections::HashMap;
use std::time::Duration;

use regcenter::RegistryServer;

use crate::common::process::Process;
use crate::common::{raw, temp_dir};

const P: &str = "/myRPC/registry";

/// Parses Prometheus text exposition strictly enough to catch malformed
/// output: every sample belongs to a declared family and has a numeric value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut declared = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            declared.push(name);
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = key.split('{').next().unwrap();
        assert!(
            declared.iter().any(|d| name == d
                || name
                    .strip_prefix(d.as_str())
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
            "sample of an undeclared family: {line}"
        );
        let labels = &key[name.len()..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
            }
        }
        samples.insert(key.to_string(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_count_a_known_sequence() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .ttl(Duration::from_millis(200))
        .min_ttl(Duration::from_millis(50))
        .start()
        .unwrap();
    let a = s.local_addr();
    let srv = |v| [("X-Myrpc-Server", v)];
    raw(a, "POST", &format!("{P}/arith"), &srv("tcp@a:1")); // registration
    raw(a, "POST", &format!("{P}/arith"), &srv("tcp@a:1")); // renewal
    raw(a, "POST", &format!("{P}/arith"), &srv("tcp@b:1")); // registration
    raw(a, "DELETE", &format!("{P}/arith"), &srv("tcp@b:1")); // deregistration
    raw(a, "POST", P, &[]); // 400
    raw(
        a,
        "POST",
        &format!("{P}/echo"),
        &[("X-Myrpc-Server", "tcp@c:1"), ("X-Myrpc-Ttl", "1m")],
    );
    crate::common::wait_until("tcp@a:1 to expire", Duration::from_secs(5), || {
        s.registry().alive("arith").is_empty()
    });
    let r = raw(a, "GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = parse_prometheus(&r.text());
    assert_eq!(m["regcenter_registrations_total"], 3.0);
    assert_eq!(m["regcenter_renewals_total"], 1.0);
    assert_eq!(m["regcenter_deregistrations_total"], 1.0);
    assert_eq!(m["regcenter_expiries_total"], 1.0);
    assert_eq!(m["regcenter_entries{service=\"echo\"}"], 1.0);
    assert!(!m.contains_key("regcenter_entries{service=\"arith\"}"));
    assert_eq!(
        m["regcenter_requests_total{method=\"POST\",status=\"200\"}"],
        4.0
    );
    assert_eq!(
        m["regcenter_requests_total{method=\"POST\",status=\"400\"}"],
        1.0
    );
    assert_eq!(
        m["regcenter_requests_total{method=\"DELETE\",status=\"200\"}"],
        1.0
    );
    assert_eq!(m["regcenter_parked_watchers"], 0.0);
    let count = m["regcenter_request_duration_seconds_count"];
    assert_eq!(
        m["regcenter_request_duration_seconds_bucket{le=\"+Inf\"}"],
        count
    );
    assert!(count >= 6.0);
}

#[test]
fn the_status_page_lists_services_and_instances() {
    let s = RegistryServer::start_local().unwrap();
    let opts = regcenter::PutOptions::new()
        .weight(3)
        .meta("zone", "<eu>")
        .ttl(Duration::from_secs(60));
    s.registry()
        .put_with("arith", "tcp@10.0.0.1:7001", &opts)
        .unwrap();
    let r = raw(s.local_addr(), "GET", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(html.contains("tcp@10.0.0.1:7001") && html.contains("arith"));
    assert!(html.contains("zone=&lt;eu&gt;"), "metadata is escaped");
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "no external assets"
    );
}

/// Loads the status page in headless Chromium and reads the rendered DOM.
#[test]
fn the_status_page_renders_in_a_real_browser() {
    let Some(chromium) = crate::common::chromium("the_status_page_renders_in_a_real_browser")
    else {
        return;
    };
    let s = RegistryServer::start_local().unwrap();
    let opts = regcenter::PutOptions::new()
        .weight(7)
        .meta("version", "1.2")
        .ttl(Duration::from_secs(60));
    s.registry()
        .put_with("arith", "tcp@10.0.0.1:7001", &opts)
        .unwrap();
    s.registry()
        .put_with("", "tcp@10.0.0.2:7002", &opts)
        .unwrap();
    let out = chromium.run(&["--dump-dom"], &format!("http://{}/", s.local_addr()));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<table class=\"instances\">"),
        "no table in {dom}"
    );
    for text in [
        "tcp@10.0.0.1:7001",
        "tcp@10.0.0.2:7002",
        "arith",
        "(default)",
        "version=1.2",
        "<td>7</td>",
    ] {
        assert!(dom.contains(text), "{text:?} not rendered in {dom}");
    }
}

#[test]
fn a_restarted_registry_answers_from_its_snapshot_at_once() {
    let dir = temp_dir("snap");
    let file = dir.join("table");
    let start = |addr: &str| {
        RegistryServer::builder()
            .addr(addr)
            .min_ttl(Duration::from_millis(50))
            .snapshot(&file)
            .start()
            .unwrap()
    };
    let s = start("127.0.0.1:0");
    let addr = s.local_addr().to_string();
    let long = regcenter::PutOptions::new()
        .ttl(Duration::from_secs(60))
        .weight(3)
        .meta("zone", "eu");
    s.registry().put_with("arith", "tcp@kept:1", &long).unwrap();
    let short = regcenter::PutOptions::new().ttl(Duration::from_millis(300));
    s.registry()
        .put_with("arith", "tcp@short:1", &short)
        .unwrap();
    let index = s.registry().index("arith");
    s.shutdown().unwrap();
    assert!(file.exists(), "written at shutdown");
    // The registry was down for a second: the short entry's TTL passed
    // meanwhile. (The snapshot says when it was written.)
    let text = std::fs::read_to_string(&file).unwrap();
    let written: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("written "))
        .unwrap()
        .parse()
        .unwrap();
    let text = text.replace(
        &format!("written {written}"),
        &format!("written {}", written - 1000),
    );
    std::fs::write(&file, text).unwrap();
    let s = start(&addr);
    let r = raw(
        s.local_addr(),
        "GET",
        &format!("{P}/arith?format=json"),
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["servers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["servers"][0]["addr"], "tcp@kept:1");
    assert_eq!(v["servers"][0]["weight"], 3);
    assert!(
        v["index"].as_u64().unwrap() >= index,
        "the index went backwards"
    );
    s.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_snapshot_is_reported_and_the_registry_starts_empty() {
    let dir = temp_dir("corrupt");
    let file = dir.join("table");
    std::fs::write(
        &file,
        "regcenter-snapshot 1\ncounter 9\narith\ttcp@a:1\t1\t5000\t",
    )
    .unwrap();
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .snapshot(&file)
        .start()
        .unwrap();
    assert!(s.registry().is_empty());
    assert!(
        dir.join("table.corrupt").exists(),
        "kept aside for inspection"
    );
    s.registry().put("", "tcp@new:1").unwrap();
    s.shutdown().unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("tcp@new:1"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_answers_watchers_writes_the_snapshot_and_exits_0() {
    let dir = temp_dir("sigterm");
    let file = dir.join("table");
    let (mut p, addr) = Process::serve(&["--snapshot", file.to_str().unwrap()]);
    let r = raw(
        addr,
        "POST",
        P,
        &[("X-Myrpc-Server", "tcp@a:1"), ("X-Myrpc-Ttl", "1m")],
    );
    assert_eq!(r.status, 200);
    let index = r.header("X-Myrpc-Index").unwrap().to_string();
    let watcher =
        std::thread::spawn(move || raw(addr, "GET", &format!("{P}?index={index}&wait=60s"), &[]));
    // Give the watcher time to be parked; it is answered either way.
    crate::common::wait_until("the watcher to connect", Duration::from_secs(5), || {
        raw(addr, "GET", "/metrics", &[])
            .text()
            .contains("regcenter_parked_watchers 1")
    });
    p.signal(libc::SIGTERM);
    assert!(p.wait(Duration::from_secs(20)).success(), "exit code 0");
    assert_eq!(
        watcher.join().unwrap().status,
        200,
        "the parked watcher was answered"
    );
    assert!(std::fs::read_to_string(&file).unwrap().contains("tcp@a:1"));
    std::fs::remove_dir_all(&dir).unwrap();
}
