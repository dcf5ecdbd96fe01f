//! The one place configuration and metadata documents are parsed.
//!
//! Every parse error names the file, line and column, on one line. YAML goes through
//! serde-saphyr (maintained, panic-free) with its default budget, which bounds
//! alias expansion ("billion laughs"), nesting depth and document size; duplicate keys
//! are errors. Files are size-checked before they are read.

use anyhow::Context;
use camino::Utf8Path;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Largest YAML config file we read (treefile, image.yaml): far above any real one.
pub const MAX_YAML_BYTES: u64 = 4 << 20;
/// Largest JSON metadata file we read (a builds.json of 100k builds is ~10 MiB).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// A document that could not be parsed, with where.
#[derive(Debug, Error)]
#[error("{file}{}: {message}", location(*.line, *.column))]
pub struct ParseError {
    pub file: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

fn location(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Parse YAML text; `origin` names it in errors.
pub fn yaml_from_str<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ParseError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let loc = e.location();
        let message = strip_location(&e.without_snippet().to_string());
        ParseError {
            file: origin.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message,
        }
    })
}

/// serde-saphyr appends its own "at line X, column Y"; we print the location up front.
fn strip_location(msg: &str) -> String {
    let msg = msg.lines().next().unwrap_or(msg).trim();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].trim_end_matches(',').to_string(),
        None => msg.to_string(),
    }
}

/// Parse JSON bytes; `origin` names it in errors.
pub fn json_from_slice<T: DeserializeOwned>(bytes: &[u8], origin: &str) -> Result<T, ParseError> {
    serde_json::from_slice(bytes).map_err(|e| ParseError {
        file: origin.to_string(),
        line: (e.line() > 0).then_some(e.line() as u64),
        column: (e.column() > 0).then_some(e.column() as u64),
        message: strip_json_location(&e.to_string()),
    })
}

fn strip_json_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Read a file, refusing one larger than `max` bytes (a hostile or corrupt input
/// must not exhaust memory).
pub fn read_limited(path: &Utf8Path, max: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {path}"))?;
    if buf.len() as u64 > max {
        anyhow::bail!("{path}: larger than the {max}-byte limit for this kind of file");
    }
    Ok(buf)
}

/// Read and parse a YAML file.
pub fn read_yaml<T: DeserializeOwned>(path: &Utf8Path) -> anyhow::Result<T> {
    let bytes = read_limited(path, MAX_YAML_BYTES)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| ParseError {
        file: path.to_string(),
        line: None,
        column: None,
        message: format!("not valid UTF-8 (at byte {})", e.valid_up_to()),
    })?;
    Ok(yaml_from_str(text, path.as_str())?)
}

/// Read and parse a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Utf8Path) -> anyhow::Result<T> {
    let bytes = read_limited(path, MAX_JSON_BYTES)?;
    Ok(json_from_slice(&bytes, path.as_str())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        size: u32,
        #[serde(default)]
        kargs: Vec<String>,
    }

    #[test]
    fn yaml_errors_name_file_line_and_column() {
        let e = yaml_from_str::<Conf>("size: 3\nbogus: 1\n", "image.yaml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("image.yaml:2:"), "{s}");
        assert!(s.contains("bogus"), "{s}");
        assert!(!s.contains('\n'), "{s}");
        let e = yaml_from_str::<Conf>("size: [\n", "x.yaml").unwrap_err();
        assert!(e.to_string().starts_with("x.yaml:"), "{e}");
        let e = yaml_from_str::<Conf>("size: notanumber\n", "x.yaml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn yaml_duplicate_keys_refused() {
        assert!(yaml_from_str::<Conf>("size: 1\nsize: 2\n", "d.yaml").is_err());
    }

    #[test]
    fn yaml_alias_bomb_refused() {
        // Nine levels of nine-fold aliases: 9^9 strings if expanded.
        let mut doc = String::from(
            "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        let r = yaml_from_str::<BTreeMap<String, serde_json::Value>>(&doc, "bomb.yaml");
        assert!(r.is_err(), "alias bomb was expanded");
    }

    #[test]
    fn json_errors_name_file_line_and_column() {
        let e = json_from_slice::<serde_json::Value>(b"{\n  \"a\": 1,\n  x\n}", "meta.json")
            .unwrap_err();
        assert_eq!((e.line, e.column.is_some()), (Some(3), true));
        assert!(e.to_string().starts_with("meta.json:3:"), "{e}");
    }

    #[test]
    fn read_limited_refuses_big_files() -> anyhow::Result<()> {
        let td = tempfile::tempdir()?;
        let p = Utf8Path::from_path(td.path()).context("utf8")?.join("big");
        std::fs::write(&p, vec![b'a'; 100])?;
        assert!(read_limited(&p, 99).is_err());
        assert_eq!(read_limited(&p, 100)?.len(), 100);
        Ok(())
    }
}
