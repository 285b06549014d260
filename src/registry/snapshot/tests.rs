//! The snapshot format: round trips, damage, versions, the counter.

use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::protocol::Status;
use crate::registry::PutOptions;
use crate::registry::tests::{S, registry};

#[test]
fn snapshots_round_trip_and_drop_what_expired() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    reg.put_with(
        "svc",
        "a",
        &PutOptions::new()
            .ttl(30 * S)
            .weight(4)
            .meta("zone", "e u&x"),
    )
    .unwrap();
    reg.put_with("", "b", &PutOptions::new().ttl(2 * S))
        .unwrap();
    let counter = reg.counter();
    let text = reg.snapshot();
    clock.advance(S);
    let fresh = registry(&clock);
    // Time passes during the restart: b has 2 s left in the snapshot.
    clock.advance(S);
    assert_eq!(fresh.restore(&text).unwrap(), 2);
    assert!(fresh.counter() >= counter);
    assert!(fresh.index("svc") >= counter, "no index goes backwards");
    let e = &fresh.entries()[1];
    assert_eq!(
        (e.addr.as_str(), e.weight, e.meta["zone"].as_str()),
        ("a", 4, "e u&x")
    );
    clock.advance(2 * S);
    assert!(fresh.alive("").is_empty(), "b's remaining 2 s passed");
    assert_eq!(fresh.alive("svc"), ["a"]);
}

#[test]
fn a_restore_keeps_to_the_bounds_and_the_limit_of_its_registry() {
    let clock = ManualClock::new();
    let wide = Registry::builder()
        .free_form_addresses(true)
        .max_ttl(3600 * S)
        .clock(clock.clone())
        .build()
        .unwrap();
    for a in ["a", "b", "c"] {
        wide.put_with("", a, &PutOptions::new().ttl(3600 * S))
            .unwrap();
    }
    let narrow = Registry::builder()
        .max_ttl(60 * S)
        .max_entries(2)
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(narrow.restore(&wide.snapshot()).unwrap(), 2);
    for e in narrow.entries() {
        assert_eq!(e.ttl, 60 * S, "{e:?}");
        assert!(e.expires_in.unwrap() <= 60 * S, "{e:?}");
    }
    clock.advance(60 * S);
    assert!(narrow.is_empty(), "the clamped TTL is the one in force");
}

#[test]
fn corrupt_or_truncated_snapshots_load_nothing() {
    let reg = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    reg.put("svc", "a").unwrap();
    reg.put("svc", "b").unwrap();
    let text = reg.snapshot();
    let fresh = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    let truncated = &text[..text.rfind("end").unwrap()];
    for bad in [
        "",
        "garbage",
        truncated,
        &text.replacen("\t1\t5000", "\tx\t5000", 1),
        &text.replace("end 2", "end 3"),
    ] {
        assert!(
            matches!(fresh.restore(bad), Err(Error::BadSnapshot { .. })),
            "{bad:?}"
        );
    }
    assert!(fresh.is_empty());
    assert_eq!(fresh.restore(&text).unwrap(), 2);
}

#[test]
fn a_snapshot_not_marked_clean_moves_the_counter_past_what_a_crash_lost() {
    let reg = Registry::builder()
        .free_form_addresses(true)
        .build()
        .unwrap();
    for a in ["a", "b", "c"] {
        reg.put("svc", a).unwrap();
    }
    reg.remove("svc", "c").unwrap();
    let counter = reg.counter();
    // The final snapshot of a shutdown: nothing changed after it.
    let clean = Registry::new();
    assert_eq!(clean.restore(&reg.snapshot_text(true)).unwrap(), 2);
    assert_eq!(clean.counter(), counter + 2, "one change per entry loaded");
    // Written while running: changes may have followed, with indexes
    // clients saw.
    let unclean = Registry::new();
    assert_eq!(unclean.restore(&reg.snapshot()).unwrap(), 2);
    assert_eq!(unclean.counter(), counter + UNCLEAN_GAP + 2);
    assert!(unclean.index("svc") > counter + UNCLEAN_GAP);
    assert!(reg.snapshot().contains("\nclean no\n"));
}

#[test]
fn version_1_snapshots_still_load_as_not_clean() {
    let v1 = "regcenter-snapshot 1\ncounter 9\nwritten 0\n\
              svc\ttcp@a:1\t3\t0\t-\tzone=eu\nend 1\n";
    let reg = Registry::new();
    assert_eq!(reg.restore(v1).unwrap(), 1);
    assert_eq!(reg.counter(), 9 + UNCLEAN_GAP + 1);
    let e = &reg.entries()[0];
    assert_eq!(
        (e.addr.as_str(), e.weight, e.ttl),
        ("tcp@a:1", 3, Duration::ZERO)
    );
    assert_eq!(e.meta["zone"], "eu");
    for bad in [
        v1.replace("snapshot 1", "snapshot 4"),
        v1.replace("snapshot 1", "snapshot 3"), // no clean line
        v1.replace("snapshot 1", "snapshot 2"), // no clean line
    ] {
        assert!(
            matches!(
                Registry::new().restore(&bad),
                Err(Error::BadSnapshot { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn the_counter_of_a_damaged_snapshot_is_passed_when_its_header_reads() {
    let reg = Registry::new();
    assert_eq!(
        reg.restore_counter(b"regcenter-snapshot 2\ncounter 77\n\xff"),
        Some(77)
    );
    assert_eq!(reg.counter(), 77 + UNCLEAN_GAP);
    let other = Registry::new();
    assert_eq!(other.restore_counter(b"\xffgarbage\ncounter 5\n"), None);
    assert_eq!(
        other.counter(),
        UNCLEAN_GAP,
        "past what one crash could lose"
    );
}

#[test]
fn a_bad_snapshot_is_a_permanent_error_naming_its_line() {
    let err = Registry::new()
        .restore("regcenter-snapshot 2\ncounter x\n")
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert_eq!(
        err.to_string(),
        "snapshot line 2: expected `counter N`: restore an intact copy, or start without it"
    );
}

#[test]
fn a_bad_snapshot_file_is_reported_with_its_path_and_line() {
    let reg = Registry::new();
    let path = Path::new("/var/lib/regcenter/table");
    let unclean = b"regcenter-snapshot 2\ncounter 9\nwritten 0\nclean maybe\nend 0\n";
    let err = restore_file(&reg, path, unclean).unwrap_err();
    assert!(
        matches!(&err, Error::BadSnapshot { path: Some(p), line: Some(4), .. } if p == path),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "snapshot /var/lib/regcenter/table line 4: expected `clean yes` or `clean no`: \
         restore an intact copy, or start without it"
    );
    // The log line and the refusal name the file themselves.
    assert_eq!(fault(&err), "line 4: expected `clean yes` or `clean no`");
    let err = restore_file(&reg, path, b"regcenter-snapshot 2\ncounter 9\n\xff").unwrap_err();
    assert!(
        matches!(&err, Error::BadSnapshot { path: Some(p), line: Some(3), .. } if p == path),
        "{err:?}"
    );
    assert_eq!(fault(&err), "line 3: byte 31 is not UTF-8 text");
    assert!(!err.is_transient());
    assert!(reg.is_empty());
    let unreadable = Error::BadSnapshot {
        path: Some(path.into()),
        line: None,
        reason: "reading it failed".into(),
        source: Some(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
    };
    assert_eq!(fault(&unreadable), "reading it failed: permission denied");
}

#[test]
fn the_status_survives_a_snapshot_and_older_versions_load_as_up() {
    let clock = ManualClock::new();
    let reg = registry(&clock);
    let drain = PutOptions::new().status(Status::Draining);
    reg.put_with("svc", "a", &drain).unwrap();
    reg.put("svc", "b").unwrap();
    let text = reg.snapshot();
    assert!(text.starts_with("regcenter-snapshot 3\n"), "{text}");
    let fresh = registry(&clock);
    assert_eq!(fresh.restore(&text).unwrap(), 2);
    assert_eq!(fresh.alive("svc"), ["b"]);
    let status: Vec<Status> = fresh.entries().iter().map(|e| e.status).collect();
    assert_eq!(status, [Status::Draining, Status::Up]);
    // The first heartbeat after the restart, without a status, keeps it.
    assert!(!fresh.put("svc", "a").unwrap().changed);
    assert_eq!(fresh.alive("svc"), ["b"]);

    let v2 = "regcenter-snapshot 2\ncounter 9\nwritten 0\nclean yes\n\
              svc\ttcp@a:1\t3\t0\t-\tzone=eu\nend 1\n";
    let old = Registry::new();
    assert_eq!(old.restore(v2).unwrap(), 1);
    assert_eq!(old.entries()[0].status, Status::Up);
    assert_eq!(old.alive("svc"), ["tcp@a:1"]);
    let v3 = v2.replace("snapshot 2", "snapshot 3");
    for bad in [
        v3.clone(),                                 // six fields
        v3.replace("zone=eu", "zone=eu\tsleeping"), // no such status
        v2.replace("zone=eu", "zone=eu\tup"),       // seven fields in version 2
    ] {
        assert!(
            matches!(
                Registry::new().restore(&bad),
                Err(Error::BadSnapshot { .. })
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        Registry::new()
            .restore(&v3.replace("zone=eu", "zone=eu\tdraining"))
            .unwrap(),
        1
    );
}
