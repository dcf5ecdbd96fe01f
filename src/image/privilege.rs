//! Running the steps that need root (OSTree deployment, filling filesystems with
//! files owned by uid 0) without root.
//!
//! As root they run directly. Otherwise they run inside `unshare -r`: a user
//! namespace in which our uid is mapped to 0. Files are created with our real uid on
//! disk, but inside the namespace they are owned by 0, so `ostree admin deploy` can
//! `fchown` them and `mkfs.ext4 -d` records uid 0 in the filesystem it makes. Only uid
//! 0 is mapped (newuidmap is often missing), so a commit holding files owned by other
//! users cannot be deployed this way; that needs root.

use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use crate::cmd::CommandRunExt;

/// How root-needing steps are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsRoot {
    /// We are root: run directly.
    Direct,
    /// Run inside `unshare -r`.
    UserNs,
}

/// Quote one word for `sh`.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl AsRoot {
    /// Decide for this process; when not root, check that user namespaces work.
    pub fn detect() -> Result<AsRoot> {
        if rustix::process::geteuid().is_root() {
            return Ok(AsRoot::Direct);
        }
        Command::new("unshare").args(["-r", "true"]).run().context(
            "not running as root, and an unprivileged user namespace is not available \
                 (unshare -r failed); run as root or allow user namespaces \
                 (sysctl kernel.unprivileged_userns_clone=1)",
        )?;
        Ok(AsRoot::UserNs)
    }

    /// A command for `argv`, wrapped in `unshare -r` when needed.
    pub fn command<S: AsRef<std::ffi::OsStr>>(self, argv: &[S]) -> Result<Command> {
        let Some((prog, args)) = argv.split_first() else {
            bail!("empty command");
        };
        Ok(match self {
            AsRoot::Direct => {
                let mut c = Command::new(prog);
                c.args(args);
                c
            }
            AsRoot::UserNs => {
                let mut c = Command::new("unshare");
                c.arg("-r").arg("--").arg(prog).args(args);
                c
            }
        })
    }

    /// Run a sequence of commands, stopping at the first failure. In a user namespace
    /// the whole sequence runs in one `unshare -r sh -ec`, so it shares one namespace.
    pub fn run_steps(self, steps: &[Vec<String>]) -> Result<()> {
        match self {
            AsRoot::Direct => {
                for s in steps {
                    self.command(s)?.run()?;
                }
                Ok(())
            }
            AsRoot::UserNs => {
                let script: Vec<String> = steps
                    .iter()
                    .map(|s| s.iter().map(|w| sh_quote(w)).collect::<Vec<_>>().join(" "))
                    .collect();
                let script = script.join("\n");
                tracing::debug!("in a user namespace:\n{script}");
                Command::new("unshare")
                    .args(["-r", "--", "sh", "-ec"])
                    .arg(&script)
                    .run()
            }
        }
    }

    /// Remove a directory tree made by these steps (as a user, directories that the
    /// deployment made read-only need the namespace's root to be removed).
    pub fn remove_tree(self, path: &Utf8Path) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            _ => {}
        }
        match self {
            // `ostree admin deploy` makes each deployment directory immutable
            // (chattr +i), which even root must undo before removing it.
            AsRoot::Direct => crate::scratch::remove_tree(path.as_std_path())
                .with_context(|| format!("removing {path}")),
            AsRoot::UserNs => self
                .command(&["rm", "-rf", "--", path.as_str()])?
                .run()
                .with_context(|| format!("removing {path}")),
        }
    }
}

/// A scratch directory under `tmp/` holding files made as (mapped) root, removed
/// when done, also on failure. Setting the environment variable `keep_var` keeps it
/// for debugging.
pub struct Scratch {
    pub path: Utf8PathBuf,
    asroot: AsRoot,
    keep: bool,
    /// Holds the directory's live mark (see [`crate::scratch`]) until it is removed
    /// or kept: `None` once done.
    live: Option<std::fs::File>,
}

impl Scratch {
    /// A new scratch directory in `parent`, after removing those of dead runs there.
    pub fn new(parent: &Utf8Path, name: &str, asroot: AsRoot, keep_var: &str) -> Result<Self> {
        if let Err(e) = crate::scratch::remove_stale_scratch(parent) {
            tracing::warn!("{e:#}");
        }
        let (path, live) = crate::scratch::create_live(parent, name)?;
        Ok(Scratch {
            path,
            asroot,
            keep: std::env::var_os(keep_var).is_some(),
            live: Some(live),
        })
    }

    /// Remove it now, reporting a failure.
    pub fn close(mut self) -> Result<()> {
        self.finish()
    }

    /// Remove it, or keep it (no longer marked live, so only a step that owns the
    /// work directory's tmp/, cosa-compose, removes it, not the next scratch). Once.
    fn finish(&mut self) -> Result<()> {
        let Some(_live) = self.live.take() else {
            return Ok(());
        };
        if self.keep {
            tracing::info!("keeping {}", self.path);
            let _ = std::fs::remove_file(self.path.join(crate::scratch::LIVE_MARK));
            return Ok(());
        }
        self.asroot.remove_tree(&self.path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a/b=c"), "a/b=c");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
    }
}
