//! `regcenter watch`: print the list each time it changes.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use regcenter::Discovery;

use super::signals::{Asked, Signals, log_ignored};
use super::{Args, CA_FILE, Command, ETCD, Failure, REGISTRY, SERVICE, TOKEN_FILE};

pub(super) const COMMAND: Command = Command {
    name: "watch",
    synopsis: "[options]",
    flags: &[REGISTRY, SERVICE, TOKEN_FILE, CA_FILE, ETCD],
    notes: "\
prints '# index N' and the servers, one per line, at start and on every change,
until SIGTERM (or INT, HUP, QUIT)
",
    run,
};

fn run(a: Args) -> Result<(), Failure> {
    let signals = Signals::install()?;
    let d = a.discovery(true)?;
    // A registry down at the start is said at once, and when it answers;
    // later outages the discovery logs itself (warn, then info).
    let mut reached = true;
    if d.age().is_none()
        && let Err(e) = d.refresh()
    {
        if !(e.is_transient() || matches!(e, regcenter::Error::BadResponse { .. })) {
            return Err(e.into());
        }
        eprintln!("regcenter: {}; retrying until it answers", super::chain(&e));
        reached = false;
    }
    let mut seen = None;
    let mut checked = false;
    loop {
        match signals.next(Some(Duration::ZERO)) {
            Ok(Asked::Stop(_)) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Asked::Snapshot) => log_ignored(libc::SIGUSR1),
            Ok(Asked::Ignore(sig)) => log_ignored(sig),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let index = d.wait_for_change(seen, Duration::from_millis(200));
        if !reached && d.age().is_some() {
            reached = true;
            eprintln!("regcenter: {} answers; watching", d.url());
        }
        if index != seen || (!checked && d.age().is_some()) {
            seen = index;
            let servers = d.get_all()?;
            // As `list`: an answer without index or server may come from
            // something that is not a registry at all.
            if !checked && a.text(&ETCD).is_none() {
                checked = true;
                if index.is_none() && servers.is_empty() {
                    let token = a.token()?;
                    super::list::is_a_registry(d.url(), token.as_deref())?;
                }
            }
            let mut out = format!("# index {}\n", index.map_or("-".into(), |i| i.to_string()));
            for s in servers {
                out.push_str(&s);
                out.push('\n');
            }
            super::out(&out)?;
        }
    }
    d.stop()?;
    Ok(())
}
