//! Running the field's real tools (ostree, dnf, rpm, mkfs.*, qemu-img, ...).
//!
//! Every command is logged at debug level with its full argument vector; stdin is
//! /dev/null; on failure the error names the command, its exit status and the last
//! lines of its stderr, so a failure is diagnosable from one line of output.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// How much of a failed command's stderr goes into the error.
const STDERR_TAIL: usize = 2048;

/// The command line, for logs and errors.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last part of a tool's stderr, on one line.
pub fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(STDERR_TAIL);
    let start = (start..=s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].replace('\n', " | ")
}

/// Extension methods for `std::process::Command`.
pub trait CommandRunExt {
    /// Run, capturing output; fail with the stderr tail if the command fails.
    fn run(&mut self) -> Result<()>;
    /// Run and return stdout as UTF-8.
    fn run_get_string(&mut self) -> Result<String>;
    /// Run with stdout and stderr passed through (for long, chatty steps).
    fn run_inherited(&mut self) -> Result<()>;
}

impl CommandRunExt for Command {
    fn run(&mut self) -> Result<()> {
        self.run_get_string().map(|_| ())
    }

    fn run_get_string(&mut self) -> Result<String> {
        let desc = describe(self);
        tracing::debug!("exec: {desc}");
        let out = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {desc}"))?;
        if !out.status.success() {
            bail!("{desc} failed ({}): {}", out.status, tail(&out.stderr));
        }
        String::from_utf8(out.stdout).with_context(|| format!("{desc}: output is not UTF-8"))
    }

    fn run_inherited(&mut self) -> Result<()> {
        let desc = describe(self);
        tracing::debug!("exec: {desc}");
        let st = self
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {desc}"))?;
        if !st.success() {
            bail!("{desc} failed ({st})");
        }
        Ok(())
    }
}

/// Whether `program` is found on PATH.
pub fn have(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        let p = d.join(program);
        std::fs::metadata(&p).is_ok_and(|m| m.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_failure() {
        assert_eq!(
            Command::new("echo")
                .arg("hi")
                .run_get_string()
                .ok()
                .as_deref(),
            Some("hi\n")
        );
        let e = Command::new("sh")
            .args(["-c", "echo oops >&2; exit 3"])
            .run()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sh -c") && e.contains("oops") && e.contains('3'),
            "{e}"
        );
        assert!(Command::new("/nonexistent/tool").run().is_err());
        assert!(have("sh"));
        assert!(!have("no-such-tool-here"));
    }
}
