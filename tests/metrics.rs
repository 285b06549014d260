//! `/metrics` as alerts read it: families promtool accepts, services that
//! empty out reported at 0, process, connection and snapshot health.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regcenter::RegistryServer;

use crate::common::{put_for_a_minute, raw, temp_dir, wait_until};

const P: &str = "/myRPC/registry";

/// Samples by name and labels, as written (`name{a="b"}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{l}")))
        })
        .collect()
}

fn types(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (n, t) = l.split_once(' ').unwrap();
            (n.to_string(), t.to_string())
        })
        .collect()
}

fn scrape(s: &RegistryServer) -> String {
    let r = raw(s.local_addr(), "GET", "/metrics", &[]);
    assert_eq!(r.status, 200);
    r.text()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let promtool = "/usr/bin/promtool";
    if !std::path::Path::new(promtool).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing under CI: apt-get install -y prometheus"
        );
        eprintln!(
            "SKIPPED metrics_pass_promtool_check_metrics: promtool is not installed (apt-get install prometheus)"
        );
        return;
    }
    let dir = temp_dir("promtool");
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .snapshot(dir.join("table"))
        .start()
        .unwrap();
    let a = s.local_addr();
    put_for_a_minute(s.registry(), "", "tcp@10.0.0.1:7001");
    put_for_a_minute(s.registry(), "arith", "tcp@10.0.0.2:7001");
    s.registry().put("gone", "tcp@10.0.0.3:7001").unwrap();
    s.registry().remove("gone", "tcp@10.0.0.3:7001").unwrap();
    raw(a, "POST", P, &[]); // a 400
    raw(a, "GET", &format!("{P}/arith"), &[]);
    let text = scrape(&s);
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics complained:\n{complaints}\non:\n{text}"
    );
    s.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn emptied_services_read_0_and_the_default_service_is_named() {
    let s = RegistryServer::start_local().unwrap();
    put_for_a_minute(s.registry(), "", "tcp@10.0.0.1:7001");
    put_for_a_minute(s.registry(), "arith", "tcp@10.0.0.2:7001");
    let m = samples(&scrape(&s));
    assert_eq!(m["regcenter_entries{service=\"arith\"}"], 1.0);
    assert_eq!(m["regcenter_entries{service=\"(default)\"}"], 1.0);
    assert!(!m.contains_key("regcenter_entries{service=\"\"}"));
    s.registry().remove("arith", "tcp@10.0.0.2:7001").unwrap();
    let m = samples(&scrape(&s));
    assert_eq!(
        m.get("regcenter_entries{service=\"arith\"}"),
        Some(&0.0),
        "an emptied service reads 0, so `< 1` alerts fire"
    );
    // Back again, and a service that emptied before any scrape saw it.
    put_for_a_minute(s.registry(), "arith", "tcp@10.0.0.2:7001");
    let m = samples(&scrape(&s));
    assert_eq!(m["regcenter_entries{service=\"arith\"}"], 1.0);
}

#[test]
fn build_process_connection_and_watcher_gauges_are_reported() {
    let s = RegistryServer::start_local().unwrap();
    let text = scrape(&s);
    let (m, t) = (samples(&text), types(&text));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m[&format!("regcenter_build_info{{version=\"{version}\"}}")],
        1.0
    );
    for (name, kind) in [
        ("regcenter_build_info", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
        ("regcenter_open_connections", "gauge"),
        ("regcenter_parked_watchers", "gauge"),
    ] {
        assert_eq!(t.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert!(m["process_resident_memory_bytes"] > 1e6, "{text}");
    assert!(m["process_virtual_memory_bytes"] >= m["process_resident_memory_bytes"]);
    assert!(m["process_open_fds"] >= 3.0);
    assert!(m["process_max_fds"] >= m["process_open_fds"]);
    // CPU time moves in clock ticks (10 ms): scrapes use some.
    wait_until("CPU time to be counted", Duration::from_secs(30), || {
        samples(&scrape(&s))["process_cpu_seconds_total"] > 0.0
    });
    // This test binary started within the last hour, and before now.
    let start = m["process_start_time_seconds"];
    assert!(
        start <= now_secs() + 1.0 && start > now_secs() - 3600.0,
        "{start}"
    );

    // Two open connections: one parked long-poll, one kept alive idle.
    // Neither is read until the gauges showed them.
    let a = s.local_addr();
    let index = s.registry().index("");
    let mut watcher = std::net::TcpStream::connect(a).unwrap();
    write!(
        watcher,
        "GET {P}?index={index}&wait=60s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut idle = std::net::TcpStream::connect(a).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_until(
        "the parked watcher and the open connections to show",
        Duration::from_secs(10),
        || {
            let m = samples(&scrape(&s));
            m["regcenter_parked_watchers"] == 1.0 && m["regcenter_open_connections"] >= 2.0
        },
    );
    s.registry().put("", "tcp@10.0.0.9:7001").unwrap();
    watcher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut watcher, &mut answer).unwrap();
    assert_eq!(crate::common::parse(&answer).status, 200);
    drop(idle);
}

#[test]
fn snapshot_health_shows_the_last_success_and_counts_failures() {
    let dir = temp_dir("snaphealth");
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .snapshot(dir.join("table"))
        .snapshot_interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    let before = now_secs();
    s.write_snapshot().unwrap();
    let text = scrape(&s);
    let (m, t) = (samples(&text), types(&text));
    assert_eq!(
        t["regcenter_snapshot_last_success_timestamp_seconds"],
        "gauge"
    );
    assert_eq!(t["regcenter_snapshot_failures_total"], "counter");
    let last = m["regcenter_snapshot_last_success_timestamp_seconds"];
    assert!(last >= before.floor() && last <= now_secs() + 1.0, "{last}");
    assert_eq!(m["regcenter_snapshot_failures_total"], 0.0);
    // The directory goes away: writes fail, and are counted.
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(s.write_snapshot().is_err());
    let m = samples(&scrape(&s));
    assert_eq!(m["regcenter_snapshot_failures_total"], 1.0);
    assert_eq!(
        m["regcenter_snapshot_last_success_timestamp_seconds"], last,
        "a failure leaves the last success alone"
    );
    // The final write fails too; that is reported by the shutdown.
    assert!(s.shutdown().is_err());

    // A registry without a snapshot says nothing of one.
    let s = RegistryServer::start_local().unwrap();
    assert!(!scrape(&s).contains("regcenter_snapshot_"));
}
