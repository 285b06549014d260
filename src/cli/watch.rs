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
    let mut seen = None;
    loop {
        match signals.next(Some(Duration::ZERO)) {
            Ok(Asked::Stop(_)) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(Asked::Snapshot) => log_ignored(libc::SIGUSR1),
            Ok(Asked::Ignore(sig)) => log_ignored(sig),
            Err(RecvTimeoutError::Timeout) => {}
        }
        let index = d.wait_for_change(seen, Duration::from_millis(200));
        if index != seen {
            seen = index;
            let servers = d.get_all()?;
            let mut out = format!("# index {}\n", index.map_or("-".into(), |i| i.to_string()));
            for s in servers {
                out.push_str(&s);
                out.push('\n');
            }
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| Failure::Run(Box::new(e)))?;
        }
    }
    d.stop()?;
    Ok(())
}
