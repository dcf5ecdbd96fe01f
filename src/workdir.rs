//! The coreos-assembler work directory:
//!
//! ```text
//! src/config/     the OS config: manifest.yaml, image.yaml, *.repo
//! builds/         builds.json, latest -> <id>, <id>/<arch>/meta.json + artifacts
//! tmp/            scratch and caches that may be deleted (tmp/repo: the OSTree repo)
//! cache/          persistent caches
//! ```
//!
//! Changes to `builds/` (builds.json, latest, meta.json) happen under an exclusive
//! lock on the work directory, so two processes on one machine cannot interleave
//! their read-modify-write of builds.json.

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use crate::builds::BuildsJson;
use crate::fsutil;
use crate::meta::Meta;
use crate::names::{validate_arch, validate_build_id};

/// A coreos-assembler work directory.
#[derive(Debug, Clone)]
pub struct Workdir {
    root: Utf8PathBuf,
}

/// Proof that the work directory lock is held; released on drop.
#[derive(Debug)]
pub struct WorkdirLock {
    _file: std::fs::File,
}

impl Workdir {
    /// Open an existing work directory.
    pub fn open(root: impl Into<Utf8PathBuf>) -> Result<Self> {
        let root = root.into();
        let md = std::fs::metadata(&root)
            .with_context(|| format!("work directory {root} does not exist"))?;
        if !md.is_dir() {
            bail!("work directory {root} is not a directory");
        }
        Ok(Self { root })
    }

    /// Create (or complete) a work directory's skeleton and open it.
    pub fn init(root: impl Into<Utf8PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["src/config", "builds", "tmp", "cache"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {p}"))?;
        }
        Self::open(root)
    }

    pub fn root(&self) -> &Utf8Path {
        &self.root
    }
    pub fn config_dir(&self) -> Utf8PathBuf {
        self.root.join("src/config")
    }
    pub fn builds_dir(&self) -> Utf8PathBuf {
        self.root.join("builds")
    }
    pub fn tmp_dir(&self) -> Utf8PathBuf {
        self.root.join("tmp")
    }
    pub fn cache_dir(&self) -> Utf8PathBuf {
        self.root.join("cache")
    }
    /// The archive-mode OSTree repository where composes commit (a cache, as in coreos-assembler).
    pub fn repo_dir(&self) -> Utf8PathBuf {
        self.root.join("tmp/repo")
    }
    pub fn builds_json_path(&self) -> Utf8PathBuf {
        self.builds_dir().join("builds.json")
    }
    pub fn latest_link(&self) -> Utf8PathBuf {
        self.builds_dir().join("latest")
    }

    /// `builds/<id>`, after validating the ID.
    pub fn build_dir(&self, id: &str) -> Result<Utf8PathBuf> {
        validate_build_id(id)?;
        Ok(self.builds_dir().join(id))
    }

    /// `builds/<id>/<arch>`, after validating both.
    pub fn build_arch_dir(&self, id: &str, arch: &str) -> Result<Utf8PathBuf> {
        validate_arch(arch)?;
        Ok(self.build_dir(id)?.join(arch))
    }

    pub fn meta_path(&self, id: &str, arch: &str) -> Result<Utf8PathBuf> {
        Ok(self.build_arch_dir(id, arch)?.join("meta.json"))
    }

    /// Take the exclusive work directory lock, waiting for another holder if needed.
    pub fn lock(&self) -> Result<WorkdirLock> {
        use rustix::fs::{FlockOperation, flock};
        let dir = self.builds_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
        let path = dir.join(".builds.json.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {path}"))?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            tracing::info!("waiting for another process to release {path}");
            flock(&file, FlockOperation::LockExclusive)
                .with_context(|| format!("locking {path}"))?;
        }
        Ok(WorkdirLock { _file: file })
    }

    /// Read builds.json; a work directory without one has no builds yet.
    pub fn read_builds(&self) -> Result<BuildsJson> {
        let p = self.builds_json_path();
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BuildsJson::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {p}")),
            Ok(_) => {}
        }
        let bytes = crate::parse::read_limited(&p, crate::parse::MAX_JSON_BYTES)?;
        BuildsJson::parse(&bytes, p.as_str())
    }

    /// Write builds.json atomically; the lock must be held.
    pub fn write_builds(&self, builds: &BuildsJson, _lock: &WorkdirLock) -> Result<()> {
        fsutil::atomic_write(&self.builds_json_path(), &builds.to_json_bytes()?)
    }

    /// Read a build's meta.json.
    pub fn read_meta(&self, id: &str, arch: &str) -> Result<Meta> {
        let p = self.meta_path(id, arch)?;
        let bytes = crate::parse::read_limited(&p, crate::parse::MAX_JSON_BYTES)?;
        let m = Meta::parse(&bytes, p.as_str())?;
        if m.buildid != id {
            bail!("{p}: buildid is {:?}, expected {id:?}", m.buildid);
        }
        Ok(m)
    }

    /// Write a build's meta.json atomically; the lock must be held.
    pub fn write_meta(&self, meta: &Meta, arch: &str, _lock: &WorkdirLock) -> Result<()> {
        let p = self.meta_path(&meta.buildid, arch)?;
        fsutil::atomic_write(&p, &meta.to_json_bytes()?)
    }

    /// The build `builds/latest` points at, if any. A latest that points nowhere, or
    /// anywhere but a build ID inside `builds/`, is an error.
    pub fn latest_id(&self) -> Result<Option<String>> {
        let link = self.latest_link();
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                bail!("{link} is not a symlink")
            }
            Err(e) => return Err(e).with_context(|| format!("reading {link}")),
        };
        let target = target
            .to_str()
            .with_context(|| format!("{link} points to a non-UTF-8 name"))?
            .to_string();
        validate_build_id(&target).map_err(|e| anyhow::anyhow!("{link}: {e}"))?;
        let dir = self.builds_dir().join(&target);
        if !dir.is_dir() {
            bail!("{link} points to {target}, which does not exist");
        }
        Ok(Some(target))
    }

    /// Point `builds/latest` at `id` atomically, or remove it (`None`); the lock must be held.
    pub fn set_latest(&self, id: Option<&str>, _lock: &WorkdirLock) -> Result<()> {
        let link = self.latest_link();
        match id {
            Some(id) => {
                validate_build_id(id)?;
                fsutil::replace_symlink(id, &link)
            }
            None => match std::fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {link}"))
                }
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_workdir() -> Result<(tempfile::TempDir, Workdir)> {
        let td = tempfile::tempdir()?;
        let root = Utf8PathBuf::from_path_buf(td.path().to_path_buf())
            .map_err(|p| anyhow::anyhow!("non-UTF-8 {}", p.display()))?;
        let wd = Workdir::init(root)?;
        Ok((td, wd))
    }

    #[test]
    fn latest_states() -> Result<()> {
        let (_td, wd) = tmp_workdir()?;
        assert_eq!(wd.latest_id()?, None);
        let lock = wd.lock()?;
        std::fs::create_dir_all(wd.build_dir("1")?)?;
        wd.set_latest(Some("1"), &lock)?;
        assert_eq!(wd.latest_id()?.as_deref(), Some("1"));
        // Dangling.
        wd.set_latest(Some("2"), &lock)?;
        let e = wd.latest_id().unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // Pointing outside builds/.
        std::os::unix::fs::symlink("../..", wd.builds_dir().join("x"))?;
        std::fs::rename(wd.builds_dir().join("x"), wd.latest_link())?;
        assert!(wd.latest_id().is_err());
        wd.set_latest(None, &lock)?;
        assert_eq!(wd.latest_id()?, None);
        Ok(())
    }

    #[test]
    fn missing_builds_json_is_empty_but_corrupt_is_an_error() -> Result<()> {
        let (_td, wd) = tmp_workdir()?;
        assert!(wd.read_builds()?.builds.is_empty());
        std::fs::write(
            wd.builds_json_path(),
            "{\n  \"schema-version\": \"1.0.0\",\n  \"builds\": [\n",
        )?;
        let e = wd.read_builds().unwrap_err();
        assert!(format!("{e:#}").contains("builds.json:"), "{e:#}");
        Ok(())
    }

    #[test]
    fn lock_is_exclusive() -> Result<()> {
        use rustix::fs::{FlockOperation, flock};
        let (_td, wd) = tmp_workdir()?;
        let _held = wd.lock()?;
        let other = std::fs::File::open(wd.builds_dir().join(".builds.json.lock"))?;
        assert!(flock(&other, FlockOperation::NonBlockingLockExclusive).is_err());
        Ok(())
    }
}
