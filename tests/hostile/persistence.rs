//! Hostile persistence: crashes at random moments, damaged snapshot files,
//! and files planted next to the snapshot. Acknowledged changes older than
//! one snapshot interval survive, indexes never go backwards, and the
//! snapshot is never destroyed or redirected.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use regcenter::{Error, RegistryServer};

use super::signals::{Process, temp_dir};
use crate::common::{threads_named, wait_until};

/// A snapshot that is valid but for one byte that is not UTF-8.
fn unreadable_snapshot() -> Vec<u8> {
    let mut bytes =
        b"regcenter-snapshot 1\ncounter 1000\nwritten 1000\nsvc\ttcp@a:1\t1\t0\t-\tzone=".to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(b"\nend 1\n");
    bytes
}

fn corrupt_path(file: &Path) -> std::path::PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".corrupt");
    s.into()
}

#[test]
fn an_unreadable_snapshot_is_kept_aside_and_never_overwritten() {
    let dir = temp_dir("unreadable");
    let file = dir.join("table");
    let bytes = unreadable_snapshot();
    std::fs::write(&file, &bytes).unwrap();
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .snapshot(&file)
        .snapshot_interval(Duration::from_millis(20))
        .start()
        .unwrap();
    let aside = corrupt_path(&file);
    assert_eq!(
        std::fs::read(&aside).ok().as_deref(),
        Some(&bytes[..]),
        "kept aside as table.corrupt"
    );
    assert!(s.registry().is_empty());
    assert!(
        s.registry().counter() >= 1000,
        "the counter starts past the one in the unreadable file: {}",
        s.registry().counter()
    );
    // The table is written again (empty, as it really is); the copy aside
    // stays as it was.
    wait_until("a periodic write", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.contains("end 0"))
    });
    s.shutdown().unwrap();
    assert_eq!(std::fs::read(&aside).unwrap(), bytes);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_that_cannot_be_set_aside_stops_the_start() {
    let dir = temp_dir("no-aside");
    let file = dir.join("table");
    let bytes = unreadable_snapshot();
    std::fs::write(&file, &bytes).unwrap();
    // A non-empty directory where the copy would go: rename(2) cannot
    // replace it.
    let aside = corrupt_path(&file);
    std::fs::create_dir(&aside).unwrap();
    std::fs::write(aside.join("keep"), "x").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = RegistryServer::builder()
        .addr(format!("127.0.0.1:{port}"))
        .threads(2)
        .snapshot(&file)
        .start();
    assert!(
        matches!(
            r,
            Err(Error::InvalidConfig {
                setting: "snapshot",
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(threads_named(&format!("rc{port}-")), 0);
    TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");
    // The binary refuses it the same way.
    let mut p = Process::spawn(
        &[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--snapshot",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let code = p.wait(Duration::from_secs(20)).code();
    assert_eq!(code, Some(2), "{}", p.stderr());
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "left as it was");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_planted_temporary_file_is_never_written_through() {
    let dir = temp_dir("planted-tmp");
    let file = dir.join("table");
    let victim = dir.join("victim");
    let tmp = dir.join("table.tmp");
    std::fs::write(&victim, "precious").unwrap();
    type Plant = fn(&Path, &Path);
    let plants: [(&str, Plant); 3] = [
        ("a symlink", |v, t| {
            std::os::unix::fs::symlink(v, t).unwrap()
        }),
        ("a hard link", |v, t| std::fs::hard_link(v, t).unwrap()),
        ("a dangling symlink", |v, t| {
            std::os::unix::fs::symlink(v.with_file_name("nowhere"), t).unwrap()
        }),
    ];
    for (what, plant) in plants {
        plant(&victim, &tmp);
        let s = RegistryServer::builder()
            .addr("127.0.0.1:0")
            .threads(2)
            .snapshot(&file)
            .start()
            .unwrap();
        crate::common::put_for_a_minute(s.registry(), "", "tcp@a:1");
        s.shutdown().unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious",
            "{what}"
        );
        assert!(
            !dir.join("nowhere").exists(),
            "{what}: created through the link"
        );
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.is_file(), "{what}: the snapshot is a plain file");
        assert!(
            std::fs::read_to_string(&file).unwrap().contains("tcp@a:1"),
            "{what}"
        );
        assert!(
            std::fs::symlink_metadata(&tmp).is_err(),
            "{what}: no tmp left"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
