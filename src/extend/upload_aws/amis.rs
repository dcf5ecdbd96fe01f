//! meta.json's `amis`: one `{name: <region>, hvm: <image ID>, snapshot: <snapshot ID>}`
//! per region (coreos-assembler's schema), updated one region at a time under the
//! work directory lock, so a region that failed never costs the others' records.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::meta::Meta;
use crate::workdir::Workdir;

/// One region's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ami {
    /// The region.
    pub name: String,
    /// The image ID.
    pub hvm: String,
    /// The root snapshot ID.
    pub snapshot: String,
}

/// The `amis` of a meta.json (empty when it has none).
pub fn read(meta: &Meta, origin: &str) -> Result<Vec<Ami>> {
    match meta.extra.get("amis") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => match serde_json::from_value(v.clone()) {
            Ok(a) => Ok(a),
            Err(e) => bail!("{origin}: amis: {e}"),
        },
    }
}

/// Put `ami` in `list`, replacing the same region's entry in place.
pub fn upsert(list: &mut Vec<Ami>, ami: Ami) {
    match list.iter_mut().find(|a| a.name == ami.name) {
        Some(a) => *a = ami,
        None => list.push(ami),
    }
}

/// Record one region's image in the build's meta.json (re-read under the lock,
/// written atomically).
pub fn record(wd: &Workdir, id: &str, arch: &str, ami: Ami) -> Result<()> {
    let lock = wd.lock()?;
    let mut meta = wd.read_meta(id, arch)?;
    let origin = wd.meta_path(id, arch)?;
    let mut list = read(&meta, origin.as_str())?;
    if list.contains(&ami) {
        return Ok(());
    }
    upsert(&mut list, ami);
    meta.extra
        .insert("amis".into(), serde_json::to_value(&list)?);
    wd.write_meta(&meta, arch, &lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ami(region: &str, id: &str) -> Ami {
        Ami {
            name: region.into(),
            hvm: id.into(),
            snapshot: format!("snap-{id}"),
        }
    }

    #[test]
    fn upsert_replaces_the_region_in_place() {
        let mut l = vec![ami("us-east-1", "a"), ami("eu-west-1", "b")];
        upsert(&mut l, ami("us-east-1", "c"));
        upsert(&mut l, ami("us-west-2", "d"));
        assert_eq!(
            l,
            [
                ami("us-east-1", "c"),
                ami("eu-west-1", "b"),
                ami("us-west-2", "d")
            ]
        );
    }

    #[test]
    fn bad_amis_named() {
        let mut m: Meta = serde_json::from_value(serde_json::json!({
            "buildid": "1", "name": "x", "ostree-commit": "0".repeat(64),
            "ostree-version": "1", "ostree-timestamp": "2020-01-01T00:00:00Z",
            "amis": [{"name": "us-east-1", "hvm": "ami-1"}]
        }))
        .unwrap();
        let e = read(&m, "meta.json").unwrap_err().to_string();
        assert!(
            e.starts_with("meta.json: amis:") && e.contains("snapshot"),
            "{e}"
        );
        m.extra.remove("amis");
        assert!(read(&m, "meta.json").unwrap().is_empty());
    }
}
