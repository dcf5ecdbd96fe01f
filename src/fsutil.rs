//! Atomic writes: every file we publish is written to a temporary file in the same
//! directory, fsync'd, then renamed over its final name, and the directory is fsync'd.
//! A reader (or a crash) therefore sees either the old file or the new one, never a
//! half-written one, and no temporary file ever sits under a final name.

use std::io::Write;

use anyhow::{Context, Result};
use camino::Utf8Path;

/// Prefix of every temporary file we create; cleanup and listings can recognise them.
pub const TMP_PREFIX: &str = ".cosa-tmp.";

fn parent_of(path: &Utf8Path) -> &Utf8Path {
    match path.parent() {
        Some(p) if !p.as_str().is_empty() => p,
        _ => Utf8Path::new("."),
    }
}

/// fsync a directory so that a rename inside it is durable.
pub fn fsync_dir(dir: &Utf8Path) -> Result<()> {
    let f = std::fs::File::open(dir).with_context(|| format!("opening directory {dir}"))?;
    f.sync_all()
        .with_context(|| format!("syncing directory {dir}"))
}

/// Write `contents` to `path` atomically (temp file + fsync + rename + fsync of the directory).
pub fn atomic_write(path: &Utf8Path, contents: &[u8]) -> Result<()> {
    atomic_write_with(path, |w| w.write_all(contents).map_err(Into::into))
}

/// Like [`atomic_write`], with the contents produced by a closure writing to the temp file.
pub fn atomic_write_with(
    path: &Utf8Path,
    f: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> Result<()>,
) -> Result<()> {
    let dir = parent_of(path);
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {dir}"))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        f(&mut w).with_context(|| format!("writing {path}"))?;
        w.flush().with_context(|| format!("writing {path}"))?;
    }
    // Files we publish are world-readable like coreos-assembler's (0644).
    set_mode(tmp.path(), 0o644)?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {path}"))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming into place {path}"))?;
    fsync_dir(dir)
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

/// Serialise `value` as pretty JSON (4-space indent, like coreos-assembler) and write it atomically.
pub fn write_json<T: serde::Serialize>(path: &Utf8Path, value: &T) -> Result<()> {
    atomic_write_with(path, |w| {
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut *w, fmt);
        value.serialize(&mut ser)?;
        w.write_all(b"\n")?;
        Ok(())
    })
}

/// Point the symlink `link` at `target` atomically: a new link is made under a
/// temporary name and renamed over the old one, so `link` always exists.
pub fn replace_symlink(target: &str, link: &Utf8Path) -> Result<()> {
    let dir = parent_of(link);
    let name = link.file_name().unwrap_or("link");
    let tmp = dir.join(format!("{TMP_PREFIX}{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("creating symlink {tmp} -> {target}"))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("replacing symlink {link}"));
    }
    fsync_dir(dir)
}

/// sha256 (hex) and size of a file, streamed.
pub fn sha256_file(path: &Utf8Path) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).with_context(|| format!("reading {path}"))?;
    Ok((hex::encode(h.finalize()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() -> Result<()> {
        let td = tempfile::tempdir()?;
        let dir = Utf8Path::from_path(td.path()).context("utf8")?;
        let p = dir.join("x.json");
        atomic_write(&p, b"one")?;
        atomic_write(&p, b"two")?;
        assert_eq!(std::fs::read_to_string(&p)?, "two");
        let names: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names.len(), 1, "{names:?}");
        Ok(())
    }

    #[test]
    fn failed_writer_leaves_old_file() -> Result<()> {
        let td = tempfile::tempdir()?;
        let dir = Utf8Path::from_path(td.path()).context("utf8")?;
        let p = dir.join("x");
        atomic_write(&p, b"old")?;
        let r = atomic_write_with(&p, |w| {
            w.write_all(b"partial")?;
            anyhow::bail!("boom")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(&p)?, "old");
        assert_eq!(std::fs::read_dir(dir)?.count(), 1);
        Ok(())
    }

    #[test]
    fn symlink_replacement() -> Result<()> {
        let td = tempfile::tempdir()?;
        let dir = Utf8Path::from_path(td.path()).context("utf8")?;
        let l = dir.join("latest");
        replace_symlink("a", &l)?;
        replace_symlink("b", &l)?;
        assert_eq!(std::fs::read_link(&l)?.to_str(), Some("b"));
        assert_eq!(std::fs::read_dir(dir)?.count(), 1);
        Ok(())
    }
}
