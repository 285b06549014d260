//! `GET /prometheus/targets`: Prometheus' HTTP service discovery, its JSON
//! shape, its auth, and a real Prometheus reading it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use regcenter::RegistryServer;
use serde_json::Value;

use crate::common::{put_weighted, raw, wait_until};

#[test]
fn targets_answer_one_group_per_instance_with_its_labels() {
    // Free-form, so that addresses no Prometheus can scrape can be listed.
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .free_form_addresses(true)
        .start()
        .unwrap();
    put_weighted(
        &s,
        "arith",
        "tcp@10.0.0.1:7001",
        3,
        &[("zone", "eu"), ("build.id", "42"), ("tags", "a,b")],
    );
    put_weighted(&s, "arith", "http@[::1]:7002", 1, &[]);
    put_weighted(&s, "", "tcp@10.0.0.3:7003", 1, &[]);
    // Not proto@host:port: left out.
    put_weighted(&s, "arith", "10.0.0.4:7004", 1, &[]);
    put_weighted(&s, "arith", "unix@/run/x.sock", 1, &[]);
    put_weighted(&s, "arith", "tcp@10.0.0.5:http", 1, &[]);

    let r = raw(s.local_addr(), "GET", "/prometheus/targets", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let groups = r.json();
    let groups = groups.as_array().expect("an array of target groups");
    assert_eq!(groups.len(), 3, "{groups:?}");
    let by_target = |t: &str| {
        groups
            .iter()
            .find(|g| g["targets"] == serde_json::json!([t]))
            .unwrap_or_else(|| panic!("no group for {t} in {groups:?}"))
    };
    let g = by_target("10.0.0.1:7001");
    assert_eq!(
        g["labels"],
        serde_json::json!({
            "__meta_regcenter_service": "arith",
            "__meta_regcenter_address": "tcp@10.0.0.1:7001",
            "__meta_regcenter_weight": "3",
            "__meta_regcenter_status": "up",
            "__meta_regcenter_meta_zone": "eu",
            "__meta_regcenter_meta_build_id": "42",
            "__meta_regcenter_meta_tags": "a,b",
        })
    );
    let g = by_target("[::1]:7002");
    assert_eq!(g["labels"]["__meta_regcenter_address"], "http@[::1]:7002");
    let g = by_target("10.0.0.3:7003");
    assert_eq!(g["labels"]["__meta_regcenter_service"], "");

    // One service, the default one by an empty name; unknown ones are empty.
    let r = raw(
        s.local_addr(),
        "GET",
        "/prometheus/targets?service=arith",
        &[],
    );
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    let r = raw(s.local_addr(), "GET", "/prometheus/targets?service=", &[]);
    assert_eq!(r.json()[0]["targets"], serde_json::json!(["10.0.0.3:7003"]));
    let r = raw(
        s.local_addr(),
        "GET",
        "/prometheus/targets?service=nope",
        &[],
    );
    assert_eq!(r.json(), serde_json::json!([]));
    let r = raw(
        s.local_addr(),
        "GET",
        "/prometheus/targets?service=a!b",
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = raw(s.local_addr(), "POST", "/prometheus/targets", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
}

#[test]
fn two_keys_with_one_label_name_keep_the_first_in_byte_order() {
    let s = RegistryServer::start_local().unwrap();
    put_weighted(&s, "x", "tcp@h:1", 1, &[("a-b", "dash"), ("a.b", "dot")]);
    let r = raw(s.local_addr(), "GET", "/prometheus/targets", &[]);
    assert_eq!(r.json()[0]["labels"]["__meta_regcenter_meta_a_b"], "dash");
}

#[test]
fn targets_follow_protect_reads() {
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .token("s3cret-token")
        .protect_reads(true)
        .start()
        .unwrap();
    put_weighted(&s, "x", "tcp@h:1", 1, &[]);
    let r = raw(s.local_addr(), "GET", "/prometheus/targets", &[]);
    assert_eq!(r.status, 401);
    let auth = ("Authorization", "Bearer s3cret-token");
    let r = raw(s.local_addr(), "GET", "/prometheus/targets", &[auth]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let open = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .token("s3cret-token")
        .start()
        .unwrap();
    let r = raw(open.local_addr(), "GET", "/prometheus/targets", &[]);
    assert_eq!(r.status, 200, "reads stay open without --protect-reads");
}

/// A Prometheus process of the test's own, killed by its PID on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` with `config` (scrape jobs) on a free
    /// loopback port; `None` (after saying why) when it is not installed
    /// outside CI.
    fn start(name: &str, scrape_configs: &str) -> Option<Prometheus> {
        let bin = "/usr/bin/prometheus";
        if !std::path::Path::new(bin).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "prometheus is missing under CI: .ci/run installs it (apt-get install -y prometheus)"
            );
            eprintln!("SKIPPED {name}: prometheus is not installed (apt-get install prometheus)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "regcenter-prometheus-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        // Scrapes are not what is tested: once an hour.
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1h\nscrape_configs:\n{scrape_configs}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus { child, dir, port };
        wait_until("prometheus to be ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            let addr = format!("127.0.0.1:{}", p.port).parse().unwrap();
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && raw(addr, "GET", "/-/ready", &[]).status == 200
        });
        Some(p)
    }

    /// The active targets of `job`: their discovered labels.
    fn targets(&self, job: &str) -> Vec<Value> {
        // Prometheus answers large bodies chunked: read with ureq.
        let t = Some(Duration::from_secs(5));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(t)
            .timeout_recv_response(t)
            .timeout_recv_body(t)
            .proxy(None)
            .build()
            .into();
        let url = format!("http://127.0.0.1:{}/api/v1/targets?state=active", self.port);
        let v: Value = agent
            .get(&url)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null);
        v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["scrapePool"] == job)
            .map(|t| t["discoveredLabels"].clone())
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the child this test started, by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn has_target(targets: &[Value], address: &str) -> bool {
    targets.iter().any(|t| t["__address__"] == address)
}

#[test]
fn a_real_prometheus_discovers_and_drops_targets_through_http_sd() {
    let s = RegistryServer::start_local().unwrap();
    let port = s.local_addr().port();
    // Debian's prometheus is built without consul_sd_configs (its
    // dependency is not packaged), so only http_sd is run for real; the
    // Consul API is held to the requests Prometheus sends in consul.rs.
    let jobs = format!(
        "  - job_name: http_sd\n    http_sd_configs:\n      - url: http://127.0.0.1:{port}/prometheus/targets\n        refresh_interval: 1s\n"
    );
    let Some(prom) = Prometheus::start(
        "a_real_prometheus_discovers_and_drops_targets_through_http_sd",
        &jobs,
    ) else {
        return;
    };
    put_weighted(
        &s,
        "arith",
        "tcp@127.0.0.1:7001",
        2,
        &[("zone", "eu"), ("build.id", "42")],
    );
    put_weighted(&s, "arith", "tcp@127.0.0.1:7002", 1, &[]);
    put_weighted(&s, "", "tcp@127.0.0.1:7003", 1, &[]);
    let deadline = Duration::from_secs(90);
    let all = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"];
    let t0 = std::time::Instant::now();
    wait_until("prometheus to discover the three targets", deadline, || {
        let t = prom.targets("http_sd");
        t.len() == 3 && all.iter().all(|a| has_target(&t, a))
    });
    eprintln!("prometheus discovered the targets in {:?}", t0.elapsed());
    let t = prom.targets("http_sd");
    let first = t
        .iter()
        .find(|t| t["__address__"] == "127.0.0.1:7001")
        .unwrap();
    assert_eq!(first["__meta_regcenter_service"], "arith", "{first}");
    assert_eq!(first["__meta_regcenter_address"], "tcp@127.0.0.1:7001");
    assert_eq!(first["__meta_regcenter_weight"], "2");
    assert_eq!(first["__meta_regcenter_status"], "up");
    assert_eq!(first["__meta_regcenter_meta_zone"], "eu");
    assert_eq!(first["__meta_regcenter_meta_build_id"], "42");

    s.registry().remove("arith", "tcp@127.0.0.1:7001").unwrap();
    let t0 = std::time::Instant::now();
    wait_until(
        "prometheus to drop the deregistered target",
        deadline,
        || {
            let t = prom.targets("http_sd");
            t.len() == 2 && !has_target(&t, "127.0.0.1:7001")
        },
    );
    eprintln!(
        "prometheus dropped the deregistered target in {:?}",
        t0.elapsed()
    );
    let log = prom.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") && l.contains("discovery"))
        .collect();
    assert!(
        errors.is_empty(),
        "prometheus' discovery logged errors:\n{}",
        errors.join("\n")
    );
}
