//! Unit tests of the entries of one service.

use super::*;

const S: u64 = 1_000_000_000;

fn meta(k: &str, v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(k.to_string(), v.to_string())])
}

/// What a put asks for, keeping the status in force.
fn l(weight: u32, meta: &BTreeMap<String, String>) -> Labels<'_> {
    Labels {
        weight,
        meta,
        status: None,
    }
}

#[test]
fn every_address_prints_back_as_it_came() {
    let long = format!("tcp@{}.example.org:7001", "host".repeat(10));
    let cases = [
        ("tcp@10.0.1.2:7001", true),
        ("tcp@255.255.255.255:65535", true),
        ("tcp@0.0.0.0:0", true),
        ("tcp@010.0.1.2:7001", false),
        ("tcp@10.0.1.2:07001", false),
        ("tcp@10.0.1.256:7001", false),
        ("tcp@10.0.1.2:65536", false),
        ("tcp@10.0.1:7001", false),
        ("tcp@10.0.1.2.3:7001", false),
        ("tcp@10.0.1.2:", false),
        ("tcp@10.0.1.2:7001x", false),
        ("tcp@1.2.3.4:1234567", false),
        ("udp@10.0.1.2:7001", false),
        ("a", false),
        ("", false),
        ("tcp@[::1]:7001", false),
        (long.as_str(), false),
    ];
    for (addr, packed) in cases {
        let key = Key::new(addr);
        assert_eq!(key.to_string(), addr);
        assert_eq!(matches!(key.packed, Packed::Tcp4 { .. }), packed, "{addr}");
        assert_eq!(key.long.is_some(), addr.len() > SHORT && !packed, "{addr}");
        assert_eq!(key, Key::new(addr));
    }
    assert_ne!(Key::new("tcp@10.0.1.2:7001"), Key::new("tcp@10.0.1.2:7002"));
}

#[test]
fn removal_keeps_every_other_entry_findable() {
    let mut e = Entries::new(RandomState::default());
    // Packed, short and long addresses alike.
    let addrs: Vec<String> = (0..200)
        .map(|i| match i % 3 {
            0 => format!("tcp@10.0.0.{}:{i}", i % 7),
            1 => format!("u@{i}"),
            _ => format!("tcp@host-{i}.example.org:7001"),
        })
        .collect();
    for a in &addrs {
        e.insert(Key::new(a), Duration::from_secs(5), &l(1, &NO_META), 1);
    }
    // Every other one: all three kinds.
    for a in addrs.iter().step_by(2) {
        assert!(e.remove(&Key::new(a)));
        assert!(!e.remove(&Key::new(a)), "{a} removed twice");
    }
    for (n, a) in addrs.iter().enumerate() {
        let i = e.find(&Key::new(a));
        assert_eq!(i.is_some(), n % 2 != 0, "{a}");
        if let Some(i) = i {
            assert_eq!(e.view(i).to_string(), *a);
        }
    }
    assert_eq!(e.len(), 100);
    // Freed places are reused, and the entries there are whole.
    let cold_places = e.cold.len();
    let text_bytes: Vec<usize> = e.texts.arenas.iter().map(|a| a.bytes.len()).collect();
    for a in addrs.iter().step_by(2) {
        e.insert(Key::new(a), Duration::from_secs(5), &l(1, &NO_META), 1);
    }
    assert_eq!((e.len(), e.cold.len()), (200, cold_places));
    let after: Vec<usize> = e.texts.arenas.iter().map(|a| a.bytes.len()).collect();
    assert_eq!(after, text_bytes);
    let mut listed: Vec<String> = e.iter().map(|v| v.to_string()).collect();
    listed.sort();
    let mut expected = addrs.clone();
    expected.sort();
    assert_eq!(listed, expected);
}

#[test]
fn a_sparse_service_is_rebuilt_to_fit_and_keeps_its_entries() {
    let mut e = Entries::new(RandomState::default());
    let addrs: Vec<String> = (0..3000)
        .map(|i| match i % 3 {
            0 => format!("tcp@10.0.{}.{}:7001", i / 256, i % 256),
            1 => format!("u@{i}"),
            _ => format!("tcp@host-{i}.{}.example.org:7001", "x".repeat(i % 200)),
        })
        .collect();
    for (i, a) in addrs.iter().enumerate() {
        let labels = if i % 2 == 0 {
            meta("n", a)
        } else {
            NO_META.clone()
        };
        e.insert(
            Key::new(a),
            Duration::from_secs(5),
            &l(1 + i as u32 % 7, &labels),
            i as Tick,
        );
    }
    let full = e.room();
    // Keep every tenth: the last removals find the room sparse.
    for a in addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, a)| a)
    {
        assert!(e.remove(&Key::new(a)), "{a}");
    }
    e.check_queue();
    // Between rebuilds the live entries fill from a quarter of the
    // room to all of it, and the free list grows beside them.
    let room = e.room();
    let fits = |n: usize| n <= 8 * e.len();
    assert!(
        fits(room.slots) && fits(room.places) && fits(room.queue_room) && room.queued == e.len(),
        "{room:?} kept of {full:?}"
    );
    assert!(
        room.text_bytes * 4 <= full.text_bytes,
        "{room:?} kept of {full:?}"
    );
    for (i, a) in addrs.iter().enumerate() {
        let found = e.find(&Key::new(a));
        assert_eq!(found.is_some(), i % 10 == 0, "{a}");
        let Some(b) = found else { continue };
        let v = e.view(b);
        let labels = if i % 2 == 0 {
            meta("n", a)
        } else {
            NO_META.clone()
        };
        assert_eq!(
            (v.to_string(), v.weight(), v.meta(), v.deadline()),
            (
                a.clone(),
                1 + i as u32 % 7,
                &labels,
                Some(i as Tick + 5 * S)
            )
        );
    }
    // And it grows again as before.
    for a in addrs.iter().skip(5).step_by(10) {
        e.insert(Key::new(a), Duration::from_secs(5), &l(1, &NO_META), 1);
    }
    assert_eq!(e.len(), 600);
    for a in addrs.iter().step_by(5) {
        assert!(e.find(&Key::new(a)).is_some(), "{a}");
    }
}

impl Entries {
    /// Asserts the queue is a heap by time, each item pointing at a
    /// queued entry that points back, one item an entry at most, and
    /// no item after its entry's deadline.
    fn check_queue(&self) {
        for (pos, item) in self.queue.iter().enumerate() {
            if pos > 0 {
                assert!(
                    self.queue[(pos - 1) / 2].at <= item.at,
                    "heap order at {pos}"
                );
            }
            assert_eq!(self.cold[item.cold as usize].queued as usize, pos);
        }
        for hot in self.table.iter() {
            let at = self.cold[hot.cold as usize].queued;
            match hot.deadline() {
                Some(d) => {
                    assert!(self.queue[at as usize].at <= d, "queued after its deadline")
                }
                None => assert!(at == NOT_QUEUED || (at as usize) < self.queue.len()),
            }
        }
        assert!(self.queue.len() <= self.table.len());
    }

    fn expire_all(&mut self, now: Tick) -> Vec<String> {
        let mut gone = Vec::new();
        self.expire(now, |k| gone.push(k.to_string()));
        self.check_queue();
        gone
    }
}

#[test]
fn a_renewal_moves_the_deadline_and_reports_label_changes() {
    let mut e = Entries::new(RandomState::default());
    let key = Key::new("tcp@10.0.0.1:7001");
    let ttl = Duration::from_secs(5);
    assert_eq!(
        e.insert(key.clone(), ttl, &l(2, &NO_META), 10),
        Some(10 + 5 * S)
    );
    assert_eq!(e.next_due(), Some(10 + 5 * S));
    let i = e.find(&key).unwrap();
    // Same TTL: no queue work.
    assert_eq!(e.renew(i, ttl, &l(2, &NO_META), 20), (false, false));
    assert_eq!(
        (e.view(i).deadline(), e.view(i).raw_times().last_beat()),
        (Some(20 + 5 * S), 20)
    );
    // Labels.
    assert_eq!(e.renew(i, ttl, &l(3, &NO_META), 30), (true, false));
    assert_eq!(
        e.renew(i, ttl, &l(3, &meta("zone", "a")), 30),
        (true, false)
    );
    assert_eq!(
        e.renew(i, ttl, &l(3, &meta("zone", "a")), 30),
        (false, false)
    );
    assert_eq!(e.view(i).meta(), &meta("zone", "a"));
    assert_eq!(e.renew(i, ttl, &l(3, &NO_META), 30), (true, false));
    assert_eq!((e.view(i).weight(), e.view(i).meta().len()), (3, 0));
    // A shorter TTL moves its one item earlier.
    let short = Duration::from_secs(1);
    assert_eq!(e.renew(i, short, &l(3, &NO_META), 40), (false, true));
    assert_eq!((e.next_due(), e.queue.len()), (Some(40 + S), 1));
    assert!(e.expire_all(40 + S - 1).is_empty());
    assert_eq!(e.expire_all(40 + S), ["tcp@10.0.0.1:7001"]);
    assert!(e.is_empty() && e.queue.is_empty());
    // Never expiring, then a TTL again: the old item is moved when it
    // comes due.
    e.insert(key.clone(), ttl, &l(3, &NO_META), 50);
    let i = e.find(&key).unwrap();
    assert_eq!(
        e.renew(i, Duration::ZERO, &l(3, &NO_META), 50),
        (false, false)
    );
    assert_eq!(e.view(i).deadline(), None);
    assert_eq!(
        e.renew(i, ttl, &l(3, &NO_META), 60),
        (false, false),
        "the item due at 50 + 5 s is still queued"
    );
    assert!(e.expire_all(50 + 5 * S).is_empty());
    assert_eq!(e.next_due(), Some(60 + 5 * S));
    // Never expiring: its item leaves the queue when it comes due.
    let i = e.find(&key).unwrap();
    e.renew(i, Duration::ZERO, &l(3, &NO_META), 70);
    assert!(e.expire_all(60 + 5 * S).is_empty());
    assert_eq!((e.next_due(), e.len()), (None, 1));
    // The largest TTL and weight do not spill into each other.
    let i = e.find(&key).unwrap();
    let (max_ttl, max_weight) = (TTL_LIMIT, super::super::MAX_WEIGHT);
    e.renew(i, max_ttl, &l(max_weight, &meta("k", "v")), 70);
    let v = e.view(i);
    assert_eq!(
        (v.ttl(), v.weight(), v.meta()),
        (max_ttl, max_weight, &meta("k", "v"))
    );
}

#[test]
fn the_queue_stays_whole_through_random_operations() {
    let mut e = Entries::new(RandomState::default());
    let addrs: Vec<String> = (0..1000)
        .map(|i| format!("tcp@host-{i}.example.org:1"))
        .collect();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut now = 1;
    let mut rebuilds = 0;
    for step in 0..20_000 {
        let places = e.cold.len();
        // Long TTLs for a while, then short ones: the service fills up
        // and empties out, and is rebuilt on the way down.
        let long = step / 4000 % 2 == 0;
        let a = &addrs[next(addrs.len() as u64) as usize];
        let unit = if long { 7000 } else { 70 };
        let ttl = match next(64) {
            0 => Duration::ZERO,
            _ => Duration::from_millis((1 + next(3)) * unit),
        };
        match (next(8), e.find(&Key::new(a))) {
            (0..=4, Some(i)) => drop(e.renew(i, ttl, &l(1, &NO_META), now)),
            (0..=4, None) => drop(e.insert(Key::new(a), ttl, &l(1, &NO_META), now)),
            (5, _) => drop(e.remove(&Key::new(a))),
            _ => {
                now += next(1000) * 1_000_000;
                for gone in e.expire_all(now) {
                    assert!(e.find(&Key::new(&gone)).is_none());
                }
                for v in e.iter() {
                    assert!(v.deadline().is_none_or(|d| d > now), "{v} was due");
                }
            }
        }
        e.check_queue();
        rebuilds += usize::from(e.cold.len() < places);
    }
    assert!(rebuilds >= 4, "rebuilt {rebuilds} times");
}

#[test]
fn a_restored_entry_keeps_what_was_left_of_its_ttl() {
    let mut e = Entries::new(RandomState::default());
    let (a, b) = (Key::new("a"), Key::new("b"));
    let ten = Duration::from_secs(10);
    let d = e.insert_restored(a, ten, Some(Duration::from_secs(3)), &l(1, &NO_META), 50);
    assert_eq!(d, Some(50 + 3 * S));
    let d = e.insert_restored(b.clone(), Duration::ZERO, None, &l(1, &NO_META), 50);
    assert_eq!(d, None);
    assert_eq!(e.view(e.find(&b).unwrap()).deadline(), None);
}

#[test]
fn the_status_stays_unless_asked_and_keeps_apart_from_the_weight() {
    let mut e = Entries::new(RandomState::default());
    let key = Key::new("tcp@127.0.0.1:1");
    let ttl = Duration::from_secs(5);
    let max = super::super::MAX_WEIGHT;
    let draining = Labels {
        weight: max,
        meta: &NO_META,
        status: Some(Status::Draining),
    };
    e.insert(key.clone(), ttl, &draining, 10);
    let i = e.find(&key).unwrap();
    let seen = |e: &Entries| (e.view(i).status(), e.view(i).weight());
    assert_eq!(seen(&e), (Status::Draining, max));
    // No status asked: a renewal as the seed's heartbeat sends it.
    assert_eq!(e.renew(i, ttl, &l(max, &NO_META), 20), (false, false));
    assert_eq!(e.renew(i, ttl, &draining, 30), (false, false));
    assert_eq!(seen(&e), (Status::Draining, max));
    let up = Labels {
        status: Some(Status::Up),
        ..draining
    };
    assert_eq!(e.renew(i, ttl, &up, 40), (true, false));
    assert_eq!(seen(&e), (Status::Up, max));
    assert_eq!(e.renew(i, ttl, &draining, 50), (true, false));
    assert_eq!(e.renew(i, ttl, &l(1, &NO_META), 60), (true, false));
    assert_eq!(seen(&e), (Status::Draining, 1), "the weight alone moved");
    // A new entry without a status is up.
    let other = Key::new("tcp@127.0.0.1:2");
    e.insert(other.clone(), ttl, &l(max, &NO_META), 70);
    let j = e.find(&other).unwrap();
    assert_eq!(e.view(j).status(), Status::Up);
}
