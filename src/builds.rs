//! `builds/builds.json`: the index of a build directory, newest build first.
//!
//! Format (coreos-assembler `src/cosalib/builds.py`, `pkg/builds/builds.go`):
//! `schema-version` (major must be 1), `builds: [{id, arches}]` newest first, and an
//! RFC3339 `timestamp` bumped on every change. Other keys (`tags`, `tombstone-builds`,
//! per-build `policy-cleanup`, and anything a newer tool adds) are kept as they are
//! through a read-modify-write: we own only what we change.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{validate_arch, validate_build_id};

/// The schema version we write.
pub const SCHEMA_VERSION: &str = "1.0.0";

/// One build: an ID and the architectures built for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildEntry {
    pub id: String,
    pub arches: Vec<String>,
    /// `policy-cleanup` and any other per-build key, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A named pointer at a build (`cosa tag`); tagged builds are never pruned.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tag {
    pub name: String,
    pub target: String,
}

/// The whole of `builds.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildsJson {
    #[serde(rename = "schema-version", default = "missing_schema")]
    pub schema_version: String,
    #[serde(default)]
    pub builds: Vec<BuildEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// `tags`, `tombstone-builds` and unknown keys, kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

// coreos-assembler treats a missing schema-version as 0.0.1, which it refuses.
fn missing_schema() -> String {
    "0.0.1".into()
}

/// Now, in the RFC3339 form coreos-assembler writes (`%Y-%m-%dT%H:%M:%SZ`).
pub fn rfc3339_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Default for BuildsJson {
    fn default() -> Self {
        Self {
            schema_version: SCHEMA_VERSION.into(),
            builds: Vec::new(),
            timestamp: Some(rfc3339_now()),
            extra: Map::new(),
        }
    }
}

impl BuildsJson {
    /// Parse and check a builds.json document; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self> {
        let b: Self = crate::parse::json_from_slice(bytes, origin)?;
        b.validate(origin)?;
        Ok(b)
    }

    /// Check what types cannot: the schema major version, IDs and arches that will
    /// become paths, no duplicate IDs.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let v = semver::Version::parse(&self.schema_version).map_err(|e| {
            anyhow::anyhow!(
                "{origin}: schema-version {:?} is not a version: {e}",
                self.schema_version
            )
        })?;
        if v.major != 1 {
            bail!(
                "{origin}: schema-version {} is not supported (only 1.x is)",
                self.schema_version
            );
        }
        let mut seen = std::collections::HashSet::new();
        for b in &self.builds {
            validate_build_id(&b.id).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            if !seen.insert(b.id.as_str()) {
                bail!("{origin}: build {} is listed twice", b.id);
            }
            for a in &b.arches {
                validate_arch(a).map_err(|e| anyhow::anyhow!("{origin}: build {}: {e}", b.id))?;
            }
        }
        Ok(())
    }

    /// The newest build.
    pub fn latest(&self) -> Option<&BuildEntry> {
        self.builds.first()
    }

    pub fn get(&self, id: &str) -> Option<&BuildEntry> {
        self.builds.iter().find(|b| b.id == id)
    }

    /// Whether the index has `id` built for `arch`.
    pub fn has(&self, id: &str, arch: &str) -> bool {
        self.get(id)
            .is_some_and(|b| b.arches.iter().any(|a| a == arch))
    }

    /// Record `arch` of build `id`: a new ID goes first (newest); a known ID gains the arch.
    /// Recording an arch twice is an error, as in coreos-assembler.
    pub fn insert(&mut self, id: &str, arch: &str) -> Result<()> {
        validate_build_id(id)?;
        validate_arch(arch)?;
        match self.builds.iter_mut().find(|b| b.id == id) {
            Some(b) if b.arches.iter().any(|a| a == arch) => {
                bail!("build {id} already has arch {arch} in builds.json")
            }
            Some(b) => b.arches.push(arch.to_string()),
            None => self.builds.insert(
                0,
                BuildEntry {
                    id: id.to_string(),
                    arches: vec![arch.to_string()],
                    extra: Map::new(),
                },
            ),
        }
        self.bump_timestamp();
        Ok(())
    }

    /// Remove a build entry; returns it if it was there.
    pub fn remove(&mut self, id: &str) -> Option<BuildEntry> {
        let i = self.builds.iter().position(|b| b.id == id)?;
        self.bump_timestamp();
        Some(self.builds.remove(i))
    }

    pub fn bump_timestamp(&mut self) {
        self.timestamp = Some(rfc3339_now());
    }

    /// Tags (`cosa tag`), read from the verbatim `tags` key. A malformed tag list is an error:
    /// guessing could prune a build someone tagged.
    pub fn tags(&self) -> Result<Vec<Tag>> {
        match self.extra.get("tags") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| anyhow::anyhow!("builds.json: malformed tags: {e}")),
        }
    }

    /// Record removed builds in `tombstone-builds`, as coreos-assembler's remote prune does.
    pub fn add_tombstone(&mut self, entry: BuildEntry) -> Result<()> {
        let v = self
            .extra
            .entry("tombstone-builds")
            .or_insert_with(|| Value::Array(Vec::new()));
        match v {
            Value::Array(a) => {
                a.push(serde_json::to_value(entry)?);
                Ok(())
            }
            _ => bail!("builds.json: tombstone-builds is not a list"),
        }
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
    use indoc::indoc;

    const SAMPLE: &str = indoc! {r#"
        {
            "schema-version": "1.0.0",
            "builds": [
                { "id": "32.20201030.dev.1", "arches": [ "x86_64", "aarch64" ],
                  "policy-cleanup": { "cloud-uploads": true, "images-kept": ["qemu"] } },
                { "id": "32.20201030.dev.0", "arches": [ "x86_64" ] }
            ],
            "timestamp": "2020-10-30T16:45:21Z",
            "tags": [ { "name": "stable", "created": "2020-10-30T16:45:21Z", "target": "32.20201030.dev.0" } ],
            "tombstone-builds": [ { "id": "31.1", "arches": ["x86_64"] } ],
            "x-future-key": { "nested": [1, 2, 3] }
        }
    "#};

    #[test]
    fn unknown_fields_survive_read_modify_write() -> Result<()> {
        let mut b = BuildsJson::parse(SAMPLE.as_bytes(), "builds.json")?;
        b.insert("32.20201031.dev.0", "x86_64")?;
        let out: Value = serde_json::from_slice(&b.to_json_bytes()?)?;
        let orig: Value = serde_json::from_str(SAMPLE)?;
        for key in ["tags", "tombstone-builds", "x-future-key"] {
            assert_eq!(out[key], orig[key], "{key}");
        }
        assert_eq!(out["builds"][0]["id"], "32.20201031.dev.0");
        assert_eq!(
            out["builds"][1]["policy-cleanup"],
            orig["builds"][0]["policy-cleanup"]
        );
        assert_ne!(out["timestamp"], orig["timestamp"]);
        assert_eq!(b.tags()?[0].target, "32.20201030.dev.0");
        Ok(())
    }

    #[test]
    fn insert_newest_first_and_arch_merge() -> Result<()> {
        let mut b = BuildsJson::default();
        b.insert("1", "x86_64")?;
        b.insert("2", "x86_64")?;
        b.insert("1", "aarch64")?;
        assert_eq!(b.latest().map(|e| e.id.as_str()), Some("2"));
        assert_eq!(
            b.get("1").map(|e| e.arches.clone()),
            Some(vec!["x86_64".into(), "aarch64".into()])
        );
        assert!(b.insert("1", "aarch64").is_err());
        assert!(b.insert("../x", "x86_64").is_err());
        Ok(())
    }

    #[test]
    fn schema_major_other_than_one_refused() {
        for doc in [
            r#"{"schema-version": "2.0.0", "builds": []}"#,
            r#"{"builds": []}"#,
            r#"{"schema-version": "banana", "builds": []}"#,
        ] {
            let e = BuildsJson::parse(doc.as_bytes(), "b.json").unwrap_err();
            assert!(e.to_string().contains("schema-version"), "{e}");
        }
        assert!(BuildsJson::parse(br#"{"schema-version": "1.2.0", "builds": []}"#, "b").is_ok());
    }

    #[test]
    fn hostile_entries_refused() {
        for doc in [
            r#"{"schema-version":"1.0.0","builds":[{"id":"../../etc","arches":["x86_64"]}]}"#,
            r#"{"schema-version":"1.0.0","builds":[{"id":"1","arches":["../x"]}]}"#,
            r#"{"schema-version":"1.0.0","builds":[{"id":"1","arches":["x86_64"]},{"id":"1","arches":["x86_64"]}]}"#,
            r#"{"schema-version":"1.0.0","builds":[{"id":1,"arches":["x86_64"]}]}"#,
        ] {
            assert!(
                BuildsJson::parse(doc.as_bytes(), "b.json").is_err(),
                "{doc}"
            );
        }
    }
}
