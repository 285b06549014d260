//! The `regcenter` binary: the entry point, logging, and how a failure is
//! printed and which exit code it gives. The commands and their flags are
//! in [`cli`].

mod cli;

use std::process::ExitCode;

use cli::{Failure, chain};

fn main() -> ExitCode {
    init_log();
    match cli::run(std::env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("regcenter: {msg} (see regcenter --help)");
            ExitCode::from(2)
        }
        Err(Failure::Config(e)) => {
            eprintln!("regcenter: {}", chain(&*e));
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("regcenter: {}", chain(&*e));
            ExitCode::from(1)
        }
    }
}

/// A stderr logger; the library only uses the `log` macros.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level() && m.target().starts_with("regcenter")
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} {}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn init_log() {
    let level = std::env::var("REGCENTER_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
