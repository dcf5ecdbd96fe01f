//! A store on a local or mounted filesystem (`file:///path` or a plain path).
//!
//! Objects are plain files under the root, written to a temporary name in the same
//! directory, synced and renamed. The sha256 recorded with an artifact is kept in
//! the `user.cosa.sha256` extended attribute when the filesystem supports one.
//! Conditional writes take an exclusive lock on `<root>/.builds.json.lock` (the
//! same lock a work directory's `builds/` uses), and an ETag is the content's sha256.

use std::io::{Read, Seek, SeekFrom};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use super::{Fetched, Listed, ObjectInfo, Precondition, PutMeta, PutResult};
use crate::fsutil::{self, TMP_PREFIX};

const XATTR_SHA256: &str = "user.cosa.sha256";

#[derive(Debug, Clone)]
pub struct FileStore {
    root: Utf8PathBuf,
}

impl FileStore {
    pub fn new(root: Utf8PathBuf) -> Self {
        Self { root }
    }

    /// The local path of a key. Keys come from [`super::key`] (validated names), and a
    /// key with `..` or an absolute path is refused here as well.
    pub fn path(&self, key: &str) -> Utf8PathBuf {
        self.root.join(key)
    }

    fn checked_path(&self, key: &str) -> Result<Utf8PathBuf> {
        if key.starts_with('/') || key.split('/').any(|c| c == ".." || c == ".") {
            bail!("store key {key:?} leaves the store");
        }
        Ok(self.path(key))
    }

    pub fn check_access(&self) -> Result<()> {
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => bail!("store {}: not a directory", self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("store {}: no such directory", self.root)
            }
            Err(e) => Err(e).with_context(|| format!("store {}", self.root)),
        }
    }

    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let p = self.checked_path(key)?;
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(ObjectInfo {
                size: m.len(),
                etag: None,
                sha256: get_xattr(&p),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {p}")),
        }
    }

    pub fn get_small(&self, key: &str, max: u64) -> Result<Option<Fetched>> {
        let p = self.checked_path(key)?;
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {p}")),
            Ok(_) => {}
        }
        let bytes = crate::parse::read_limited(&p, max)?;
        let etag = hex::encode(Sha256::digest(&bytes));
        Ok(Some(Fetched {
            bytes: Bytes::from(bytes),
            etag: Some(etag),
        }))
    }

    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        let p = self.checked_path(key)?;
        tokio::task::spawn_blocking(move || -> Result<Bytes> {
            let mut f = std::fs::File::open(&p).with_context(|| format!("opening {p}"))?;
            f.seek(SeekFrom::Start(start))
                .with_context(|| format!("reading {p}"))?;
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            f.take(len)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {p}"))?;
            if buf.len() as u64 != len {
                bail!(
                    "{p}: truncated: {} bytes at offset {start}, expected {len}",
                    buf.len()
                );
            }
            Ok(Bytes::from(buf))
        })
        .await
        .context("reading task failed")?
    }

    pub fn put_bytes(
        &self,
        key: &str,
        bytes: &[u8],
        meta: &PutMeta,
        pre: &Precondition,
    ) -> Result<PutResult> {
        let p = self.checked_path(key)?;
        ensure_parent(&p)?;
        if *pre == Precondition::None {
            fsutil::atomic_write(&p, bytes)?;
        } else {
            let _lock = self.lock()?;
            let current = self.get_small(key, crate::parse::MAX_JSON_BYTES)?;
            let ok = match (pre, &current) {
                (Precondition::IfAbsent, None) => true,
                (Precondition::IfMatch(tag), Some(c)) => c.etag.as_deref() == Some(tag.as_str()),
                _ => false,
            };
            if !ok {
                return Ok(PutResult::PreconditionFailed);
            }
            fsutil::atomic_write(&p, bytes)?;
        }
        if let Some(s) = &meta.sha256 {
            set_xattr(&p, s);
        }
        Ok(PutResult::Done)
    }

    pub async fn put_file(&self, key: &str, src: &Utf8Path, meta: &PutMeta) -> Result<()> {
        let dest = self.checked_path(key)?;
        let src = src.to_owned();
        let sha = meta.sha256.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            ensure_parent(&dest)?;
            let mut from = std::fs::File::open(&src).with_context(|| format!("opening {src}"))?;
            fsutil::atomic_write_with(&dest, |w| {
                std::io::copy(&mut from, w).with_context(|| format!("reading {src}"))?;
                Ok(())
            })?;
            if let Some(s) = &sha {
                set_xattr(&dest, s);
            }
            Ok(())
        })
        .await
        .context("copying task failed")?
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        walk(&self.root, "", &mut out)?;
        out.retain(|l| l.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn delete(&self, keys: &[String]) -> Result<()> {
        for k in keys {
            let p = self.checked_path(k)?;
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {p}"));
                }
                _ => {}
            }
            // Remove directories left empty, up to the root.
            let mut dir = p.parent();
            while let Some(d) = dir {
                if d == self.root || !d.starts_with(&self.root) || std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(())
    }

    /// Exclusive lock for read-modify-write of builds.json.
    pub fn lock(&self) -> Result<std::fs::File> {
        use rustix::fs::{FlockOperation, flock};
        let path = self.root.join(".builds.json.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {path}"))?;
        flock(&file, FlockOperation::LockExclusive).with_context(|| format!("locking {path}"))?;
        Ok(file)
    }
}

fn ensure_parent(p: &Utf8Path) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
    }
    Ok(())
}

fn walk(dir: &Utf8Path, rel: &str, out: &mut Vec<Listed>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {dir}")),
    };
    for ent in rd {
        let ent = ent.with_context(|| format!("listing {dir}"))?;
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        if name.starts_with(TMP_PREFIX) || name == ".builds.json.lock" {
            continue;
        }
        let key = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = ent.file_type().with_context(|| format!("listing {dir}"))?;
        if ft.is_dir() {
            walk(&dir.join(&name), &key, out)?;
        } else if ft.is_file() {
            let size = ent.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(Listed { key, size });
        }
    }
    Ok(())
}

/// The recorded sha256, if the filesystem has it. Absent or unreadable: `None`
/// (the artifact is then simply copied again).
fn get_xattr(p: &Utf8Path) -> Option<String> {
    let mut buf = [0u8; 64];
    match rustix::fs::getxattr(p.as_std_path(), XATTR_SHA256, &mut buf) {
        Ok(64) => std::str::from_utf8(&buf).ok().map(str::to_string),
        _ => None,
    }
}

/// Record the sha256; a filesystem without user xattrs only loses the copy-skipping.
fn set_xattr(p: &Utf8Path, sha256: &str) {
    if let Err(e) = rustix::fs::setxattr(
        p.as_std_path(),
        XATTR_SHA256,
        sha256.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
        tracing::debug!(
            "{p}: cannot record sha256 in an xattr ({e}); it will be copied again next time"
        );
    }
}
