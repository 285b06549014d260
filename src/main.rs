//! The `regcenter` binary: the entry point, and how a failure is printed
//! and which exit code it gives. The commands and their flags are in
//! [`cli`], the log in [`cli::logging`].

mod cli;

use std::process::ExitCode;

use cli::{Failure, chain};

fn main() -> ExitCode {
    cli::logging::init();
    let result = cli::run(std::env::args_os().skip(1).collect());
    // Summaries of lines held back by the rate limit.
    cli::logging::finish();
    match result {
        Ok(()) | Err(Failure::ClosedPipe) => ExitCode::SUCCESS,
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
