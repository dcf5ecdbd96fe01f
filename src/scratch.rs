//! Temporary files and scratch directories left by a run that died.
//!
//! Everything temporary is named with [`TMP_PREFIX`]. A scratch directory (a
//! deployment root, a boot filesystem being edited: hundreds of MiB) carries a
//! marker file, [`LIVE_MARK`], that its owner holds under an exclusive `flock` for
//! as long as it runs. The kernel drops the lock when the owner exits, however it
//! exits (kill -9 included), so an unlocked marker means a dead owner:
//!
//! - every new scratch directory first removes the dead ones beside it
//!   ([`remove_stale_scratch`]), so a killed cosa-image or cosa-extend does not leak
//!   its scratch for ever;
//! - a step that owns a directory outright (cosa-compose under the work directory
//!   lock, a build directory) removes every temporary entry but live scratch
//!   directories ([`remove_stale_tmp`]), so it never pulls a directory from under a
//!   cosa-image running beside it.
//!
//! Removal clears what stops even root: the immutable flag `ostree admin deploy`
//! sets on deployment directories, and directories without write permission.

use std::path::Path;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::fsutil::TMP_PREFIX;

/// The marker file of a live scratch directory.
pub const LIVE_MARK: &str = ".cosa-live";

/// Prefix of a scratch directory being set up (not yet marked): never swept.
const NEW_PREFIX: &str = ".cosa-new.";

/// A scratch directory `{TMP_PREFIX}{name}.XXXXXX` in `parent`, marked live: the
/// returned file holds the lock (keep it open while the directory is in use). The
/// directory is made under another prefix, marked and locked, then renamed, so a
/// sweeper never sees it unmarked.
pub fn create_live(parent: &Utf8Path, name: &str) -> Result<(Utf8PathBuf, std::fs::File)> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
    let td = tempfile::Builder::new()
        .prefix(&format!("{NEW_PREFIX}{name}."))
        .tempdir_in(parent)
        .with_context(|| format!("creating a scratch directory in {parent}"))?;
    let new = Utf8PathBuf::from_path_buf(td.path().to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    let mark = new.join(LIVE_MARK);
    let f = std::fs::File::create(&mark).with_context(|| format!("creating {mark}"))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .with_context(|| format!("locking {mark}"))?;
    let suffix = new
        .file_name()
        .and_then(|n| n.strip_prefix(NEW_PREFIX))
        .context("scratch directory name")?;
    let path = parent.join(format!("{TMP_PREFIX}{suffix}"));
    std::fs::rename(&new, &path).with_context(|| format!("renaming {new} to {path}"))?;
    // Renamed: the TempDir guard must not remove the old name (gone anyway).
    let _ = td.keep();
    Ok((path, f))
}

/// Whether `dir` is a scratch directory whose owner still runs; `None`: not marked.
fn is_live(dir: &Path) -> Option<bool> {
    let f = std::fs::File::open(dir.join(LIVE_MARK)).ok()?;
    Some(rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err())
}

/// Remove the temporary entries of `dir` left by dead runs: files and unmarked
/// directories, and scratch directories whose owner is gone. Live scratch
/// directories stay. Missing `dir` is fine.
pub fn remove_stale_tmp(dir: &Utf8Path) -> Result<()> {
    sweep(dir, true)
}

/// Remove only the scratch directories in `dir` whose owner is gone.
pub fn remove_stale_scratch(dir: &Utf8Path) -> Result<()> {
    sweep(dir, false)
}

fn sweep(dir: &Utf8Path, unmarked_too: bool) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
    };
    for ent in rd {
        let ent = ent.with_context(|| format!("listing {dir}"))?;
        if !ent.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let p = ent.path();
        let r = if ent.file_type().is_ok_and(|t| t.is_dir()) {
            match is_live(&p) {
                Some(true) => continue,
                Some(false) => {}
                None if unmarked_too => {}
                None => continue,
            }
            tracing::debug!("removing stale {}", p.display());
            remove_tree(&p)
        } else if unmarked_too {
            std::fs::remove_file(&p)
        } else {
            continue;
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing stale temporary {}", p.display()));
            }
        }
    }
    Ok(())
}

/// Remove a directory tree; when that fails, clear the immutable flag and add write
/// permission on its directories (up to 12 levels deep) and try once more.
pub fn remove_tree(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            make_removable(p, 12);
            std::fs::remove_dir_all(p)
        }
        r => r,
    }
}

fn make_removable(dir: &Path, depth: u32) {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    use std::os::unix::fs::PermissionsExt;
    if let Ok(f) = std::fs::File::open(dir)
        && let Ok(flags) = ioctl_getflags(&f)
        && flags.contains(IFlags::IMMUTABLE)
    {
        let _ = ioctl_setflags(&f, flags - IFlags::IMMUTABLE);
    }
    if let Ok(m) = std::fs::symlink_metadata(dir)
        && m.permissions().mode() & 0o700 != 0o700
    {
        let _ = std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode(m.permissions().mode() | 0o700),
        );
    }
    if depth == 0 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        if ent.file_type().is_ok_and(|t| t.is_dir()) {
            make_removable(&ent.path(), depth - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Utf8Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn live_scratch_stays_dead_scratch_goes() -> Result<()> {
        let td = tempfile::tempdir()?;
        let dir = Utf8Path::from_path(td.path()).context("utf8")?;
        let (live, lock) = create_live(dir, "image")?;
        assert!(live.file_name().unwrap().starts_with(".cosa-tmp.image."));
        assert!(live.join(LIVE_MARK).is_file());
        // A dead one: marked, lock gone; read-only inside.
        let (dead, dead_lock) = create_live(dir, "extend")?;
        drop(dead_lock);
        let ro = dead.join("deploy/x.0");
        std::fs::create_dir_all(ro.join("etc"))?;
        std::fs::write(ro.join("etc/f"), "x")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555))?;
        // Unmarked: a temporary file and directory of some other step.
        std::fs::write(dir.join(".cosa-tmp.meta.json"), "{}")?;
        std::fs::create_dir(dir.join(".cosa-tmp.compose.abc"))?;
        std::fs::create_dir(dir.join("repo"))?;

        remove_stale_scratch(dir)?;
        let left = entries(dir);
        assert!(
            !left.contains(&dead.file_name().unwrap().to_string()),
            "{left:?}"
        );
        assert!(
            left.contains(&live.file_name().unwrap().to_string()),
            "{left:?}"
        );
        assert!(
            left.contains(&".cosa-tmp.meta.json".to_string()),
            "{left:?}"
        );
        assert!(
            left.contains(&".cosa-tmp.compose.abc".to_string()),
            "{left:?}"
        );

        remove_stale_tmp(dir)?;
        assert_eq!(
            entries(dir),
            vec![live.file_name().unwrap().to_string(), "repo".to_string()]
        );
        drop(lock);
        remove_stale_tmp(dir)?;
        assert_eq!(entries(dir), vec!["repo".to_string()]);
        Ok(())
    }

    /// As root: a directory made immutable (as `ostree admin deploy` does) inside a
    /// dead scratch directory is removed too.
    #[test]
    fn immutable_directories_are_removed_as_root() -> Result<()> {
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let td = tempfile::tempdir()?;
        let dir = Utf8Path::from_path(td.path()).context("utf8")?;
        let (dead, lock) = create_live(dir, "image")?;
        drop(lock);
        let d = dead.join("sysroot/ostree/deploy/os/deploy/abc.0");
        std::fs::create_dir_all(d.join("usr"))?;
        let f = std::fs::File::open(&d)?;
        let flags = rustix::fs::ioctl_getflags(&f)?;
        if rustix::fs::ioctl_setflags(&f, flags | rustix::fs::IFlags::IMMUTABLE).is_err() {
            // A filesystem without the flag (tmpfs): nothing to test here.
            return Ok(());
        }
        drop(f);
        assert!(std::fs::remove_dir(d.join("usr")).is_err());
        remove_stale_scratch(dir)?;
        assert!(entries(dir).is_empty());
        Ok(())
    }
}
