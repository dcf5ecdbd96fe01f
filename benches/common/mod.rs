//! Helpers shared by the benchmarks: running commands, timing, medians.
// Each benchmark uses a subset.
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The median of some timings (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Run a command to success; its standard output.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    anyhow::ensure!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8(o.stdout)?)
}

/// Run a bash script (`set -euo pipefail`) with positional arguments.
pub fn bash(script: &str, args: &[&str]) -> Result<()> {
    sh(Command::new("bash")
        .args(["-euo", "pipefail", "-c", script, "bench"])
        .args(args))
    .map(|_| ())
}

/// How long one call takes.
pub fn time(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}
