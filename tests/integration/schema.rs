//! meta.json compatibility with coreos-assembler's schema (`src/v1.json`).

use anyhow::Result;
use serde_json::Value;

use crate::common::{TestWorkdir, minimal_meta};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/coreos-assembler"
);

/// Validate a meta.json document against coreos-assembler's schema; the errors, if any.
pub fn schema_errors(doc: &Value) -> Result<Vec<String>> {
    let schema: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/meta.schema.json"))?)?;
    let v = jsonschema::draft7::new(&schema).map_err(|e| anyhow::anyhow!("schema: {e}"))?;
    Ok(v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect())
}

#[test]
fn real_samples_validate() -> Result<()> {
    for f in ["meta-fcos-31.20200310.20.0.json", "meta-rhcos-44devel.json"] {
        let doc: Value = serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/{f}"))?)?;
        assert_eq!(schema_errors(&doc)?, Vec::<String>::new(), "{f}");
    }
    Ok(())
}

#[test]
fn schema_catches_what_it_should() -> Result<()> {
    // The validator is live: an unknown top-level key and a missing required key fail.
    let mut doc = serde_json::to_value(minimal_meta("1", "x86_64"))?;
    doc["x-unknown"] = Value::Bool(true);
    assert!(!schema_errors(&doc)?.is_empty());
    let mut doc = serde_json::to_value(minimal_meta("1", "x86_64"))?;
    doc.as_object_mut().map(|o| o.remove("ostree-version"));
    assert!(!schema_errors(&doc)?.is_empty());
    Ok(())
}

#[test]
fn what_we_write_validates() -> Result<()> {
    let t = TestWorkdir::new()?;
    t.add_build("1.20261126.0", "x86_64")?;
    let bytes = std::fs::read(t.wd.meta_path("1.20261126.0", "x86_64")?)?;
    let doc: Value = serde_json::from_slice(&bytes)?;
    assert_eq!(schema_errors(&doc)?, Vec::<String>::new());
    // And reads back through the model.
    let m = t.wd.read_meta("1.20261126.0", "x86_64")?;
    assert_eq!(m.buildid, "1.20261126.0");
    Ok(())
}
