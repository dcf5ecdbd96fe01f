//! Command-line plumbing shared by every binary: the global options, logging, and the
//! mapping from a run's outcome to an exit code.
//!
//! Exit codes (the same for every binary):
//! - 0: success (for `cosa-changed --exit-code`: changed);
//! - 1: failure: bad input, a failed tool, a store error; one `error:` line on stderr;
//! - 2: usage error (unknown option, missing argument), from the argument parser;
//! - 3: `cosa-changed --exit-code` only: nothing changed.

use std::process::ExitCode;

use anyhow::Result;
use camino::Utf8PathBuf;
use clap::Parser;

use crate::ci::{Ci, github_escape};
use crate::workdir::Workdir;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNCHANGED: u8 = 3;

/// Options every binary takes.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The coreos-assembler work directory (src/config, builds, tmp, cache).
    #[arg(long, env = "COSA_WORKDIR", default_value = ".", global = true)]
    pub workdir: Utf8PathBuf,
    /// More logging: -v for debug, -vv for trace (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl GlobalArgs {
    pub fn open_workdir(&self) -> Result<Workdir> {
        Workdir::open(self.workdir.clone())
    }
}

/// What a successful run reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Nothing to do (`cosa-changed --exit-code`).
    Unchanged,
}

/// A binary's command line.
pub trait Command: Parser {
    fn global(&self) -> &GlobalArgs;
    fn run(self) -> Result<Outcome>;
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // The AWS SDK traces signing inputs (the access key ID among them) at trace level,
    // and at debug level prints the resolved identity (access key ID) with the endpoint
    // and auth parameters: those crates and modules are capped at debug or info,
    // whatever RUST_LOG says (a cap only: below it, RUST_LOG and -v decide). Secrets
    // stay out of logs (tests/integration/secrets.rs).
    let caps = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("aws_sigv4", LevelFilter::DEBUG)
        .with_target("aws_smithy_runtime", LevelFilter::DEBUG)
        .with_target("aws_smithy_runtime_api", LevelFilter::DEBUG)
        .with_target(
            "aws_smithy_runtime::client::orchestrator::endpoints",
            LevelFilter::INFO,
        )
        .with_target(
            "aws_smithy_runtime::client::orchestrator::auth",
            LevelFilter::INFO,
        )
        .with_target("aws_smithy_runtime::client::identity", LevelFilter::INFO);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .with_filter(filter.and(caps));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The whole of a binary's `main`: parse, log, run, map to an exit code.
pub fn main<C: Command>() -> ExitCode {
    let cmd = match C::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cmd.global().verbose);
    match cmd.run() {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Unchanged) => ExitCode::from(EXIT_UNCHANGED),
        Err(e) => {
            report_error(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Print an error as one line with its whole cause chain (and a GitHub annotation in Actions).
pub fn report_error(e: &anyhow::Error) {
    let msg = format!("{e:#}").replace('\n', " ");
    if Ci::detect() == Ci::GitHub {
        eprintln!("::error::{}", github_escape(&msg));
    }
    eprintln!("error: {msg}");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command line's definition only when it is used: check them all here.
    #[test]
    fn command_lines_are_well_formed() {
        crate::changed::Args::command().debug_assert();
        crate::compose::Args::command().debug_assert();
        crate::image::Args::command().debug_assert();
        crate::fetch::Args::command().debug_assert();
        crate::upload::Args::command().debug_assert();
    }
}
