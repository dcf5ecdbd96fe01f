//! `builds/<id>/<arch>/meta.json`: everything known about one build for one architecture.
//!
//! The fields this project reads or writes are typed; every other key (coreos-assembler
//! has dozens: `pkgdiff`, `amis`, `gcp`, `coreos-assembler.container-config-git`, ...)
//! is kept verbatim in `extra`, so a load + save of a real coreos-assembler meta.json
//! loses nothing. What we write must validate against coreos-assembler's `v1.json`
//! schema, whose top level admits no unknown keys: new data goes in schema keys only.

use anyhow::{Result, bail};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{validate_arch, validate_build_id, validate_file_name};

/// One file of a build (`images.<key>` in meta.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// File name inside the build's arch directory.
    pub path: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(
        rename = "uncompressed-sha256",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub uncompressed_sha256: Option<String>,
    #[serde(
        rename = "uncompressed-size",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub uncompressed_size: Option<u64>,
    #[serde(
        rename = "skip-compression",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub skip_compression: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A build's meta.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub buildid: String,
    pub name: String,
    #[serde(rename = "ostree-commit")]
    pub ostree_commit: String,
    #[serde(rename = "ostree-version")]
    pub ostree_version: String,
    /// RFC3339, e.g. `2020-03-10T21:04:12Z`.
    #[serde(rename = "ostree-timestamp")]
    pub ostree_timestamp: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub ostree_ref: Option<String>,
    #[serde(
        rename = "ostree-content-checksum",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ostree_content_checksum: Option<String>,
    #[serde(
        rename = "rpm-ostree-inputhash",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub inputhash: Option<String>,
    #[serde(
        rename = "coreos-assembler.basearch",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub basearch: Option<String>,
    #[serde(
        rename = "coreos-assembler.build-timestamp",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub build_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub images: IndexMap<String, Artifact>,
    /// Every other key, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Meta {
    /// Parse and check a meta.json; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self> {
        let m: Self = crate::parse::json_from_slice(bytes, origin)?;
        m.validate(origin)?;
        Ok(m)
    }

    /// Refuse what would turn into a path outside the build: a bad build ID, arch, or an
    /// artifact path that is not a plain file name.
    pub fn validate(&self, origin: &str) -> Result<()> {
        validate_build_id(&self.buildid).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        if let Some(a) = &self.basearch {
            validate_arch(a).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        }
        for (key, art) in &self.images {
            validate_file_name(&art.path)
                .map_err(|e| anyhow::anyhow!("{origin}: images.{key}: {e}"))?;
            if art.sha256.len() != 64 || !art.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{origin}: images.{key}: sha256 {:?} is not a SHA-256 hex digest",
                    art.sha256
                );
            }
        }
        Ok(())
    }

    /// Serialise as coreos-assembler does (4-space indent).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)?;
        out.push(b'\n');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/coreos-assembler"
    );

    #[test]
    fn real_samples_round_trip_losslessly() -> Result<()> {
        for f in ["meta-fcos-31.20200310.20.0.json", "meta-rhcos-44devel.json"] {
            let path = format!("{FIXTURES}/{f}");
            let bytes = std::fs::read(&path)?;
            let m = Meta::parse(&bytes, &path)?;
            assert!(m.images.contains_key("ostree"), "{f}");
            let back: Value = serde_json::from_slice(&m.to_json_bytes()?)?;
            let orig: Value = serde_json::from_slice(&bytes)?;
            assert_eq!(back, orig, "{f} changed in a round trip");
        }
        Ok(())
    }

    #[test]
    fn traversal_in_artifact_path_refused() {
        let doc = serde_json::json!({
            "buildid": "1", "name": "x", "ostree-commit": "0".repeat(64),
            "ostree-version": "1", "ostree-timestamp": "2020-01-01T00:00:00Z",
            "images": {"qemu": {"path": "../../etc/passwd", "sha256": "0".repeat(64)}}
        });
        let e = Meta::parse(doc.to_string().as_bytes(), "meta.json").unwrap_err();
        assert!(e.to_string().contains("images.qemu"), "{e}");
        let doc = serde_json::json!({
            "buildid": "../1", "name": "x", "ostree-commit": "0".repeat(64),
            "ostree-version": "1", "ostree-timestamp": "2020-01-01T00:00:00Z"
        });
        assert!(Meta::parse(doc.to_string().as_bytes(), "meta.json").is_err());
    }
}
