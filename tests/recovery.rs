//! Discovery across a registry restart that lost its table: the last list
//! is kept beside the new one while the registry recovers, so the first
//! servers to re-register do not take every client's load.

use std::time::{Duration, Instant};

use regcenter::{Discovery, RegistryDiscovery};

use crate::json_standin::{JsonRegistry, listing, recovering, up};

fn discovery(reg: &JsonRegistry) -> RegistryDiscovery {
    RegistryDiscovery::builder(&reg.url())
        .refresh_period(Duration::from_secs(3600))
        .build()
        .unwrap()
}

#[test]
fn while_the_registry_says_it_recovers_the_old_list_is_kept_beside_the_new() {
    let reg = JsonRegistry::start(listing(50, &[&up("tcp@a:1"), &up("tcp@b:1")]));
    let d = discovery(&reg);
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1"]);
    // Restarted empty: only c has registered again.
    reg.set(recovering(3, &[&up("tcp@c:1")]));
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1", "tcp@c:1"]);
    // a registers again: listed once.
    reg.set(recovering(4, &[&up("tcp@a:1"), &up("tcp@c:1")]));
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1", "tcp@c:1"]);
    // a leaves the restarted registry, which had listed it: deregistered
    // (or expired) there, so it goes. b, never listed since, stays.
    reg.set(recovering(5, &[&up("tcp@c:1")]));
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@b:1", "tcp@c:1"]);
    // Recovery ends without b: the registry's list alone.
    reg.set(listing(6, &[&up("tcp@c:1")]));
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@c:1"]);
}

#[test]
fn the_json_recovering_field_counts_as_the_header_does() {
    let reg = JsonRegistry::start(listing(50, &[&up("tcp@a:1")]));
    let d = discovery(&reg);
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    let mut answer = listing(2, &[]);
    answer.body = format!(
        "{{\"service\":\"\",\"index\":2,\"recovering\":true,\"servers\":[{}]}}\n",
        up("tcp@b:1")
    );
    reg.set(answer);
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1", "tcp@b:1"]);
    let mut done = listing(3, &[]);
    done.body = format!(
        "{{\"service\":\"\",\"index\":3,\"recovering\":false,\"servers\":[{}]}}\n",
        up("tcp@b:1")
    );
    reg.set(done);
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@b:1"]);
}

#[test]
fn a_recovering_registry_that_lists_nothing_yet_keeps_the_list() {
    let reg = JsonRegistry::start(listing(50, &[&up("tcp@a:1")]));
    let d = discovery(&reg);
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    reg.set(recovering(1, &[]));
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    // Even with an index that did not go backwards.
    reg.set(recovering(60, &[]));
    d.refresh().unwrap();
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
}

#[test]
fn a_registry_that_says_nothing_is_taken_to_recover_for_one_ttl_after_its_index_went_back() {
    // An older registry: no recovery header or field. Entries had 400 ms
    // left when last listed.
    let entry =
        |a: &str| format!("{{\"addr\":\"{a}\",\"weight\":1,\"meta\":{{}},\"expires_in_ms\":400}}");
    let reg = JsonRegistry::start(listing(50, &[&entry("tcp@a:1")]));
    let d = discovery(&reg);
    assert_eq!(d.get_all().unwrap(), ["tcp@a:1"]);
    let t = Instant::now();
    reg.set(listing(2, &[&entry("tcp@b:1")]));
    d.refresh().unwrap();
    let union = d.get_all().unwrap();
    let seen_within = t.elapsed();
    if seen_within < Duration::from_millis(400) {
        assert_eq!(union, ["tcp@a:1", "tcp@b:1"], "after {seen_within:?}");
    }
    crate::common::wait_until(
        "the old entry to go after one TTL",
        Duration::from_secs(5),
        || d.get_all().unwrap() == ["tcp@b:1"],
    );
    // Held for about the 400 ms the entry had left (read back from its
    // expiry a moment after it was listed, so a little less), not dropped
    // at once.
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "dropped after {:?}",
        t.elapsed()
    );
}
