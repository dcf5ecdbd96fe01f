//! Stores: where build directories live between CI jobs.
//!
//! A store holds coreos-assembler's `builds/` layout under a prefix, as
//! `cosa buildupload` writes it: `<prefix>/builds.json` and
//! `<prefix>/<id>/<arch>/{meta.json, artifacts...}`. A store URL names that prefix:
//! `file:///srv/builds` (or a plain path). Other schemes are refused with a clear error
//! until their backend exists.

mod file;

use anyhow::{Result, bail};
use camino::Utf8PathBuf;

use crate::builds::BuildsJson;

pub use file::FileStore;

/// An opened store.
#[derive(Debug)]
pub enum Store {
    File(FileStore),
}

impl Store {
    /// Open a store from its URL.
    pub fn open(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("store URL {url:?}: a file:// URL needs an absolute path (file:///...)");
            }
            return Ok(Self::File(FileStore::new(Utf8PathBuf::from(path))));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            bail!(
                "store URL {url:?}: the {scheme}:// store is not supported by this version (supported: file://, plain paths)"
            );
        }
        if url.is_empty() {
            bail!("store URL is empty");
        }
        Ok(Self::File(FileStore::new(Utf8PathBuf::from(url))))
    }

    /// The store's builds.json, or `None` when the store has none yet.
    pub fn read_builds(&self) -> Result<Option<BuildsJson>> {
        match self {
            Self::File(f) => f.read_builds(),
        }
    }
}
