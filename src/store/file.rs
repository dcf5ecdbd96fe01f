//! A store on a local or mounted filesystem.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::builds::BuildsJson;

#[derive(Debug)]
pub struct FileStore {
    root: Utf8PathBuf,
}

impl FileStore {
    pub fn new(root: Utf8PathBuf) -> Self {
        Self { root }
    }

    pub fn read_builds(&self) -> Result<Option<BuildsJson>> {
        let p = self.root.join("builds.json");
        match std::fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.root.is_dir() {
                    anyhow::bail!("store {}: no such directory", self.root);
                }
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("reading {p}")),
            Ok(_) => {}
        }
        let bytes = crate::parse::read_limited(&p, crate::parse::MAX_JSON_BYTES)?;
        Ok(Some(BuildsJson::parse(&bytes, p.as_str())?))
    }
}
