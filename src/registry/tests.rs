//! The [`Registry`] API, over random operations too.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::*;
use crate::clock::ManualClock;

pub(super) const S: Duration = Duration::from_secs(1);

/// A registry with a 5 s default TTL, bounds 1 s to 60 s, on `clock`;
/// free-form, since these tests name servers `a`, `b`.
pub(super) fn registry(clock: &ManualClock) -> Registry {
    Registry::builder()
        .free_form_addresses(true)
        .default_ttl(5 * S)
        .min_ttl(S)
        .max_ttl(60 * S)
        .clock(clock.clone())
        .build()
        .unwrap()
}

#[test]
fn entries_expire_when_their_ttl_passes_unless_renewed() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    reg.put("", "a").unwrap();
    reg.put("", "b").unwrap();
    clock.advance(4 * S);
    reg.put("", "b").unwrap(); // renew b only
    assert_eq!(reg.alive(""), ["a", "b"]);
    clock.advance(S);
    assert_eq!(reg.alive(""), ["b"], "a's deadline passed exactly now");
    clock.advance(3 * S);
    assert_eq!(reg.alive(""), ["b"]);
    clock.advance(S);
    assert!(reg.alive("").is_empty());
    assert_eq!(reg.len(), 0);
}

#[test]
fn sweep_removes_due_entries_and_counts_them() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    for a in ["a", "b", "c"] {
        reg.put("svc", a).unwrap();
    }
    assert_eq!(reg.sweep(), 0);
    clock.advance(5 * S);
    assert_eq!(reg.sweep(), 3);
    assert!(reg.services().is_empty());
}

#[test]
fn alive_is_sorted_by_bytes() {
    let reg = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    for a in ["tcp@b:2", "tcp@a:10", "Z", "tcp@a:9"] {
        reg.put("", a).unwrap();
    }
    assert_eq!(reg.alive(""), ["Z", "tcp@a:10", "tcp@a:9", "tcp@b:2"]);
    assert_eq!(reg.listing("").joined(), "Z,tcp@a:10,tcp@a:9,tcp@b:2");
    assert_eq!(reg.listing("").text(), "Z\ntcp@a:10\ntcp@a:9\ntcp@b:2\n");
}

#[test]
fn index_moves_on_membership_changes_only() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    let i0 = reg.index("svc");
    let put = reg.put("svc", "a").unwrap();
    assert!(put.changed && put.index > i0);
    let renew = reg.put("svc", "a").unwrap();
    assert!(!renew.changed);
    assert_eq!(renew.index, put.index, "a renewal leaves the index alone");
    let weighted = reg
        .put_with("svc", "a", &PutOptions::new().weight(2))
        .unwrap();
    assert!(weighted.changed && weighted.index > put.index);
    let labelled = reg
        .put_with("svc", "a", &PutOptions::new().weight(2).meta("zone", "x"))
        .unwrap();
    assert!(labelled.index > weighted.index);
    let other = reg.put("other", "z").unwrap();
    assert_eq!(
        reg.index("svc"),
        labelled.index,
        "other services do not move it"
    );
    assert!(other.index > labelled.index, "one registry-wide counter");
    assert!(reg.remove("svc", "a").unwrap());
    let after_remove = reg.index("svc");
    assert!(after_remove > other.index);
    reg.put("svc", "b").unwrap();
    let before_expiry = reg.index("svc");
    clock.advance(5 * S);
    assert!(reg.index("svc") > before_expiry, "expiry moves it");
}

#[test]
fn index_never_goes_backwards_when_a_service_empties() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    let mut last = reg.index("svc");
    for step in 0..20 {
        match step % 4 {
            0 => drop(reg.put("svc", "a").unwrap()),
            1 => drop(reg.put("other", &format!("o{step}")).unwrap()),
            2 => drop(reg.remove("svc", "a").unwrap()),
            _ => clock.advance(5 * S),
        }
        let now = reg.index("svc");
        assert!(now >= last, "step {step}: {now} < {last}");
        last = now;
    }
}

#[test]
fn a_drain_is_sticky_a_change_and_left_out_of_alive() {
    use crate::protocol::Status;
    let clock = ManualClock::new();
    let reg = registry(&clock);
    reg.put("svc", "a").unwrap();
    reg.put("svc", "b").unwrap();
    let i0 = reg.index("svc");
    let drain = PutOptions::new().status(Status::Draining);
    let drained = reg.put_with("svc", "a", &drain).unwrap();
    assert!(
        drained.changed && drained.index > i0,
        "a status change is a change"
    );
    assert_eq!(reg.alive("svc"), ["b"]);
    assert_eq!(reg.listing("svc").joined(), "b");
    assert_eq!(reg.listing("svc").index(), drained.index);
    // It renews as usual; neither a renewal without a status nor one with
    // the same status is a change.
    clock.advance(4 * S);
    let renewed = reg.put("svc", "a").unwrap();
    assert!(!renewed.changed);
    assert!(!reg.put_with("svc", "a", &drain).unwrap().changed);
    assert_eq!(reg.index("svc"), drained.index);
    let (_, infos) = reg.instances("svc");
    let seen: Vec<(&str, Status)> = infos.iter().map(|e| (e.addr.as_str(), e.status)).collect();
    assert_eq!(seen, [("a", Status::Draining), ("b", Status::Up)]);
    // And expires as usual: b at 5 s, a 5 s after its renewal at 4 s.
    clock.advance(4 * S);
    assert!(reg.alive("svc").is_empty());
    assert_eq!(reg.instances("svc").1.len(), 1, "a is draining, not gone");
    clock.advance(S);
    assert!(reg.entries().is_empty());
    // A new entry may start draining; `up` brings it back.
    reg.put_with("svc", "a", &drain).unwrap();
    assert!(reg.alive("svc").is_empty());
    let up = reg
        .put_with("svc", "a", &PutOptions::new().status(Status::Up))
        .unwrap();
    assert!(up.changed);
    assert_eq!(reg.alive("svc"), ["a"]);
}

#[test]
fn requested_ttl_is_clamped_to_the_bounds() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    let ttl = |d| {
        reg.put_with("", "a", &PutOptions::new().ttl(d))
            .unwrap()
            .ttl
    };
    assert_eq!(ttl(Duration::from_millis(10)), S);
    assert_eq!(ttl(Duration::ZERO), S);
    assert_eq!(ttl(10 * S), 10 * S);
    assert_eq!(ttl(3600 * S), 60 * S);
    assert_eq!(reg.put("", "b").unwrap().ttl, 5 * S);
}

#[test]
fn a_shorter_ttl_on_renewal_takes_effect() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    reg.put_with("", "a", &PutOptions::new().ttl(60 * S))
        .unwrap();
    reg.put_with("", "a", &PutOptions::new().ttl(2 * S))
        .unwrap();
    clock.advance(2 * S);
    assert!(reg.alive("").is_empty());
}

#[test]
fn a_longer_ttl_on_renewal_takes_effect() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    reg.put_with("", "a", &PutOptions::new().ttl(2 * S))
        .unwrap();
    reg.put_with("", "a", &PutOptions::new().ttl(30 * S))
        .unwrap();
    clock.advance(29 * S);
    assert_eq!(reg.alive(""), ["a"]);
    clock.advance(S);
    assert!(reg.alive("").is_empty());
}

#[test]
fn zero_default_ttl_means_never_expires_as_in_the_seed() {
    let clock = ManualClock::new();
    let reg = Registry::builder()
        .free_form_addresses(true)
        .default_ttl(Duration::ZERO)
        .clock(clock.clone())
        .build()
        .unwrap();
    let put = reg.put("", "a").unwrap();
    assert_eq!(put.ttl, Duration::ZERO);
    clock.advance(1_000_000 * S);
    assert_eq!(reg.alive(""), ["a"]);
    assert_eq!(reg.entries()[0].expires_in, None);
}

#[test]
fn reregistering_after_removal_gets_a_fresh_deadline() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    reg.put("", "a").unwrap();
    clock.advance(4 * S);
    reg.remove("", "a").unwrap();
    reg.put("", "a").unwrap();
    clock.advance(2 * S); // the first registration's deadline has passed
    assert_eq!(reg.alive(""), ["a"]);
    clock.advance(3 * S);
    assert!(reg.alive("").is_empty());
}

#[test]
fn services_are_isolated() {
    let reg = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    reg.put("arith", "a").unwrap();
    reg.put("", "b").unwrap();
    assert_eq!(reg.alive("arith"), ["a"]);
    assert_eq!(reg.alive(""), ["b"]);
    assert!(reg.alive("other").is_empty());
    assert!(!reg.remove("other", "a").unwrap());
    assert_eq!(reg.services(), ["", "arith"]);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let reg = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    let before = reg.counter();
    assert!(matches!(reg.put("", "a,b"), Err(Error::InvalidAddr { .. })));
    assert!(matches!(
        reg.put("a/b", "a"),
        Err(Error::InvalidService { .. })
    ));
    let w0 = PutOptions::new().weight(0);
    assert!(matches!(
        reg.put_with("", "a", &w0),
        Err(Error::InvalidConfig { .. })
    ));
    let big = PutOptions::new().meta("k", "v".repeat(2000));
    assert!(matches!(
        reg.put_with("", "a", &big),
        Err(Error::InvalidConfig { .. })
    ));
    assert_eq!(reg.counter(), before);
    assert!(reg.is_empty());
}

#[test]
fn a_full_registry_refuses_new_addresses_but_renews() {
    let reg = Registry::builder()
        .free_form_addresses(true)
        .max_entries(2)
        .build()
        .unwrap();
    reg.put("", "a").unwrap();
    reg.put("x", "b").unwrap();
    assert!(matches!(reg.put("", "c"), Err(Error::Full { limit: 2 })));
    assert!(reg.put("", "a").is_ok());
    reg.remove("", "a").unwrap();
    assert!(reg.put("", "c").is_ok());
}

/// The registry against a plain model, over random operations: puts
/// with TTLs, weights and labels, removals, time passing, restores.
#[test]
fn random_operations_agree_with_a_plain_model() {
    struct Model {
        deadline: Duration,
        ttl: Duration,
        weight: u32,
        meta: BTreeMap<String, String>,
    }
    let long = "tcp@a-rather-long-host-name.example.org:7001";
    let addrs: Vec<String> = (0..24)
        .map(|i| match i % 4 {
            0 => format!("tcp@10.0.{}.{}:7001", i / 8, i),
            1 => format!("u@{i}"),
            2 => format!("{long}{i}"),
            _ => format!("tcp@010.0.0.{i}:7001"), // not canonical: kept as text
        })
        .collect();
    let services = ["", "a", "b"];
    for seed in 1..=8u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let clock = ManualClock::new();
        let mut reg = registry(&clock);
        let mut now = Duration::ZERO;
        let mut model: HashMap<(String, String), Model> = HashMap::new();
        for step in 0..3000 {
            let service = services[next(services.len())];
            let addr = &addrs[next(addrs.len())];
            let key = (service.to_string(), addr.clone());
            model.retain(|_, m| m.deadline > now);
            match next(10) {
                0..=5 => {
                    let ttl = [None, Some(S), Some(3 * S), Some(90 * S)][next(4)];
                    let weight = 1 + next(3) as u32;
                    let mut opts = PutOptions::new().weight(weight);
                    if next(4) == 0 {
                        opts = opts.meta("zone", ["x", "y"][next(2)]);
                    }
                    if let Some(ttl) = ttl {
                        opts = opts.ttl(ttl);
                    }
                    let ttl = ttl.map_or(5 * S, |t| t.clamp(S, 60 * S));
                    let out = reg.put_with(service, addr, &opts).unwrap();
                    let labels_changed = model
                        .get(&key)
                        .is_none_or(|m| m.weight != weight || &m.meta != opts.meta_map());
                    assert_eq!(out.changed, labels_changed, "seed {seed} step {step}");
                    let meta = opts.meta_map().clone();
                    let deadline = now + ttl;
                    model.insert(
                        key,
                        Model {
                            deadline,
                            ttl,
                            weight,
                            meta,
                        },
                    );
                }
                6 => {
                    let removed = reg.remove(service, addr).unwrap();
                    assert_eq!(
                        removed,
                        model.remove(&key).is_some(),
                        "seed {seed} step {step}"
                    );
                }
                7 | 8 => {
                    let by = Duration::from_millis(50 * next(50) as u64);
                    clock.advance(by);
                    now += by;
                }
                _ => {
                    // A restart: the table comes back from its snapshot.
                    // The wall-clock time it takes counts against the
                    // remaining TTLs, as the time a registry is down
                    // does. It is measured, so how this thread is
                    // scheduled decides nothing: each entry may lose up
                    // to it, rounded up, and a millisecond for each of
                    // the two times the snapshot keeps in milliseconds.
                    let started = Instant::now();
                    let text = reg.snapshot();
                    reg = registry(&clock);
                    reg.restore(&text).unwrap();
                    let ms = started.elapsed().as_micros().div_ceil(1000) as u64;
                    let lost = Duration::from_millis(ms + 2);
                    // The model takes what each entry kept.
                    let restored: HashMap<(String, String), Duration> = reg
                        .entries()
                        .into_iter()
                        .map(|e| ((e.service, e.addr), e.expires_in.unwrap()))
                        .collect();
                    model.retain(|key, m| {
                        let want = m.deadline - now;
                        let Some(&left) = restored.get(key) else {
                            assert!(
                                want <= lost,
                                "seed {seed} step {step}: {key:?} with {want:?} left \
                                 did not survive a restart of {lost:?}"
                            );
                            return false;
                        };
                        assert!(
                            left <= want && want - left <= lost,
                            "seed {seed} step {step}: {key:?} kept {left:?} of \
                             {want:?} over a restart of {lost:?}"
                        );
                        m.deadline = now + left;
                        true
                    });
                }
            }
            model.retain(|_, m| m.deadline > now);
            for s in services {
                let mut want: Vec<(&String, &Model)> = model
                    .iter()
                    .filter(|((ms, _), _)| ms == s)
                    .map(|((_, a), m)| (a, m))
                    .collect();
                want.sort_by(|a, b| a.0.cmp(b.0));
                let (_, got) = reg.instances(s);
                let got_addrs: Vec<&String> = got.iter().map(|e| &e.addr).collect();
                let want_addrs: Vec<&String> = want.iter().map(|w| w.0).collect();
                assert_eq!(
                    got_addrs, want_addrs,
                    "seed {seed} step {step} service {s:?}"
                );
                let alive = reg.alive(s);
                assert_eq!(
                    alive.iter().collect::<Vec<_>>(),
                    want_addrs,
                    "seed {seed} step {step}"
                );
                for (e, (_, m)) in got.iter().zip(&want) {
                    assert_eq!((e.weight, &e.meta, e.ttl), (m.weight, &m.meta, m.ttl));
                    // Only the manual clock moves time between restarts.
                    assert_eq!(
                        e.expires_in,
                        Some(m.deadline - now),
                        "seed {seed} step {step}: {}",
                        e.addr
                    );
                }
            }
            assert_eq!(reg.len(), model.len());
        }
    }
}

#[test]
fn registry_and_handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Registry>();
    check::<Sweeper>();
    check::<Listing>();
}

/// What a filtered listing shows of each entry: a change to any of it is a
/// change of the listing.
type Shown = Vec<(
    String,
    u32,
    BTreeMap<String, String>,
    crate::protocol::Status,
)>;

fn shown(reg: &Registry, service: &str, filter: &[(String, String)]) -> (u64, Shown) {
    let (index, infos) = reg.matching(service, filter);
    let shown = infos
        .into_iter()
        .map(|e| (e.addr, e.weight, e.meta, e.status))
        .collect();
    (index, shown)
}

fn filter(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_filtered_index_moves_with_its_listing_only() {
    use crate::protocol::Status;
    let clock = ManualClock::new();
    let reg = registry(&clock);
    let eu = filter(&[("zone", "eu")]);
    let zone = |z: &str| PutOptions::new().meta("zone", z);
    reg.put_with("svc", "a", &zone("eu")).unwrap();
    reg.put_with("svc", "b", &zone("us")).unwrap();
    let (i0, list) = shown(&reg, "svc", &eu);
    assert_eq!(list.len(), 1);
    assert_eq!(reg.index_matching("svc", &eu), i0);
    // Changes in another zone, or outside any: the eu listing stays put.
    reg.put_with("svc", "b", &zone("us").weight(3)).unwrap();
    reg.put_with("svc", "c", &zone("us")).unwrap();
    reg.put("svc", "d").unwrap();
    reg.remove("svc", "c").unwrap();
    reg.remove("svc", "d").unwrap();
    reg.put_with("svc", "b", &zone("us").status(Status::Draining))
        .unwrap();
    assert!(reg.index("svc") > i0);
    assert_eq!(reg.index_matching("svc", &eu), i0);
    // A change in it, a server joining it, and servers leaving it do move it.
    let mut last = i0;
    let mut moved = |what: &str| {
        let now = reg.index_matching("svc", &eu);
        assert!(now > last, "{what}: {now} after {last}");
        assert!(now <= reg.counter());
        last = now;
    };
    reg.put_with("svc", "a", &zone("eu").status(Status::Draining))
        .unwrap();
    moved("a status change");
    reg.put_with("svc", "b", &zone("eu")).unwrap();
    moved("b relabelled into eu");
    reg.put_with("svc", "b", &zone("us")).unwrap();
    moved("b relabelled out of eu");
    reg.remove("svc", "a").unwrap();
    moved("a deregistered");
    reg.put_with("svc", "e", &zone("eu").ttl(S)).unwrap();
    moved("e registered");
    clock.advance(S);
    reg.sweep();
    moved("e expired");
    // The service empties out and leaves the table, then comes back in
    // another zone: never backwards, and not moved by the other zone.
    reg.remove("svc", "b").unwrap();
    moved("the service emptied out");
    let gone = reg.index_matching("svc", &eu);
    reg.put_with("svc", "f", &zone("us")).unwrap();
    assert_eq!(reg.index_matching("svc", &eu), gone);
    reg.put_with("svc", "g", &zone("eu")).unwrap();
    assert!(reg.index_matching("svc", &eu) > gone);
}

#[test]
fn churn_in_another_zone_leaves_a_filtered_index_alone_however_long() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    let eu = filter(&[("zone", "eu")]);
    let us = |id: &str| PutOptions::new().meta("zone", "us").meta("id", id);
    reg.put_with("svc", "keep", &PutOptions::new().meta("zone", "eu"))
        .unwrap();
    reg.put_with("svc", "gone", &PutOptions::new().meta("zone", "eu"))
        .unwrap();
    reg.remove("svc", "gone").unwrap();
    let n = reg.index_matching("svc", &eu);
    // Servers with an id each come and go in another zone, far more than
    // a service keeps label pairs for; then expire in a mass.
    for i in 0..5_000 {
        let id = format!("x{i}");
        reg.put_with("svc", &id, &us(&id)).unwrap();
        reg.remove("svc", &id).unwrap();
    }
    for i in 0..5_000 {
        let id = format!("y{i}");
        reg.put_with("svc", &id, &us(&id).ttl(S)).unwrap();
    }
    clock.advance(S);
    assert_eq!(reg.sweep(), 5_000);
    assert_eq!(reg.index_matching("svc", &eu), n);
    // Its own departure still moves it, in a mass expiry too.
    reg.put_with("svc", "eu2", &PutOptions::new().meta("zone", "eu").ttl(S))
        .unwrap();
    let joined = reg.index_matching("svc", &eu);
    assert!(joined > n);
    for i in 0..5_000 {
        let id = format!("z{i}");
        reg.put_with("svc", &id, &us(&id).ttl(S)).unwrap();
    }
    clock.advance(S);
    reg.sweep();
    assert!(reg.index_matching("svc", &eu) > joined);
    let (_, list) = shown(&reg, "svc", &eu);
    assert_eq!(list.len(), 1);
}

/// Filtered indexes over random operations: they never go backwards, stay
/// within the counter, and move whenever what their listing shows changed.
#[test]
fn filtered_indexes_follow_their_listings_over_random_operations() {
    use crate::protocol::Status;
    let filters = [
        filter(&[("zone", "x")]),
        filter(&[("zone", "y")]),
        filter(&[("v", "1"), ("zone", "x")]),
    ];
    let services = ["", "a"];
    for seed in 1..=6u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let clock = ManualClock::new();
        let mut reg = registry(&clock);
        let mut seen: HashMap<(&str, usize), (u64, Shown)> = HashMap::new();
        for step in 0..2000 {
            let service = services[next(services.len())];
            let addr = format!("tcp@10.0.0.{}:1", next(12));
            match next(12) {
                0..=6 => {
                    let mut opts = PutOptions::new().weight(1 + next(2) as u32);
                    match next(4) {
                        0 => {}
                        1 => opts = opts.meta("zone", "y"),
                        _ => opts = opts.meta("zone", "x").meta("v", ["1", "2"][next(2)]),
                    }
                    opts = match next(4) {
                        0 => opts.status(Status::Draining),
                        1 => opts.status(Status::Up),
                        _ => opts,
                    };
                    reg.put_with(service, &addr, &opts).unwrap();
                }
                7 | 8 => drop(reg.remove(service, &addr).unwrap()),
                9 | 10 => clock.advance(Duration::from_millis(500 * next(8) as u64)),
                _ => {
                    let text = reg.snapshot();
                    reg = registry(&clock);
                    reg.restore(&text).unwrap();
                }
            }
            for s in services {
                for (f, filter) in filters.iter().enumerate() {
                    let (index, list) = shown(&reg, s, filter);
                    let at = format!("seed {seed} step {step} service {s:?} filter {filter:?}");
                    assert!(index <= reg.counter(), "{at}");
                    assert_eq!(reg.index_matching(s, filter), index, "{at}");
                    if let Some((before, old)) = seen.get(&(s, f)) {
                        assert!(index >= *before, "{at}: {index} after {before}");
                        if *old != list {
                            assert!(index > *before, "{at}: changed at {index}");
                        }
                    }
                    seen.insert((s, f), (index, list));
                }
            }
        }
    }
}

#[test]
fn a_served_table_recovers_for_its_max_ttl_unless_restored() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    assert!(!reg.recovering(), "never served");
    clock.advance(10 * S);
    reg.begin_recovery();
    assert!(reg.recovering());
    reg.begin_recovery(); // a second start does not move the deadline
    clock.advance(60 * S - Duration::from_nanos(1));
    assert!(reg.recovering());
    clock.advance(Duration::from_nanos(1));
    assert!(!reg.recovering(), "the maximum TTL, 60 s, has passed");
    reg.begin_recovery();
    assert!(!reg.recovering(), "over for good");

    let restored = registry(&clock);
    restored.restore(&reg.snapshot()).unwrap();
    restored.begin_recovery();
    assert!(!restored.recovering());
    // A failed restore restores nothing.
    let failed = registry(&clock);
    assert!(failed.restore("not a snapshot").is_err());
    failed.begin_recovery();
    assert!(failed.recovering());
    // Restored while recovering: it knows its table now.
    failed.restore(&reg.snapshot()).unwrap();
    assert!(!failed.recovering());
}

#[test]
fn renew_existing_moves_only_the_deadline_and_never_creates() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    assert!(!reg.renew_existing("svc", "a").unwrap());
    assert!(reg.is_empty(), "a renewal of an unknown entry creates none");
    let opts = PutOptions::new()
        .ttl(10 * S)
        .weight(7)
        .meta("zone", "eu")
        .status(Status::Draining);
    reg.put_with("svc", "a", &opts).unwrap();
    let index = reg.index("svc");
    let before = reg.stats().renewals;
    clock.advance(8 * S);
    assert!(reg.renew_existing("svc", "a").unwrap());
    assert_eq!(reg.stats().renewals, before + 1);
    assert_eq!(reg.index("svc"), index, "a renewal changes nothing");
    // The TTL it registered with, 10 s, not the default 5 s.
    clock.advance(8 * S);
    let (_, entries) = reg.instances("svc");
    assert_eq!(entries.len(), 1, "renewed at 8 s for 10 s");
    let e = &entries[0];
    assert_eq!((e.weight, e.status), (7, Status::Draining));
    assert_eq!(e.meta.get("zone").map(String::as_str), Some("eu"));
    assert_eq!(e.expires_in, Some(2 * S));
    clock.advance(2 * S);
    reg.sweep();
    assert!(reg.is_empty(), "expired 10 s after the renewal");
    assert!(!reg.renew_existing("svc", "a").unwrap(), "expired: unknown");
    assert!(reg.is_empty());
    assert!(reg.renew_existing("a/b", "a").is_err());
}
