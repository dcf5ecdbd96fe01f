//! Property tests (proptest) of the parsers and the version logic: names that pass
//! validation never leave their directory, versions progress, builds.json and
//! meta.json survive a round trip, and no byte string makes a parser panic.
//!
//! 256 cases a property by default; for a longer run:
//! `PROPTEST_CASES=100000 cargo test --test integration props::`
//! (the treefile's own properties: `PROPTEST_CASES=100000 cargo test --lib proptest`).

use std::path::{Component, Path};

use chrono::{TimeZone, Utc};
use cosa::builds::BuildsJson;
use cosa::image::config::ImageConfig;
use cosa::meta::{Artifact, Meta};
use cosa::names::{validate_arch, validate_build_id, validate_file_name};
use cosa::version::next_version;
use proptest::prelude::*;

use crate::common::minimal_meta;

/// Strings with path-like and hostile pieces in them.
fn hostile_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("..".to_string()),
            Just("/".to_string()),
            Just(".".to_string()),
            Just("\\".to_string()),
            Just("\0".to_string()),
            Just("\n".to_string()),
            Just(" ".to_string()),
            Just("latest".to_string()),
            "[a-zA-Z0-9_.-]{1,8}",
            "\\PC{1,4}",
        ],
        0..8,
    )
    .prop_map(|v| v.concat())
}

fn valid_id() -> impl Strategy<Value = String> {
    "[0-9]{1,3}\\.[0-9]{8}\\.[0-9]{1,2}(\\.dev[0-9])?"
}

fn valid_arch() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x86_64".to_string()),
        Just("aarch64".to_string()),
        Just("s390x".to_string()),
        Just("ppc64le".to_string()),
        "[a-z][a-z0-9_]{0,10}",
    ]
}

/// One normal component: joined onto a directory, the name stays directly inside it.
fn one_normal_component(name: &str) -> bool {
    let mut c = Path::new(name).components();
    matches!(c.next(), Some(Component::Normal(n)) if n == name) && c.next().is_none()
}

proptest! {
    #[test]
    fn accepted_names_stay_in_their_directory(s in hostile_name()) {
        for (what, ok) in [
            ("build ID", validate_build_id(&s).is_ok()),
            ("arch", validate_arch(&s).is_ok()),
            ("file name", validate_file_name(&s).is_ok()),
        ] {
            if ok {
                prop_assert!(one_normal_component(&s), "{what} {s:?} accepted");
                prop_assert!(!s.contains(".."), "{what} {s:?} accepted");
                prop_assert!(s != "latest" && s != "builds.json" || what == "file name");
            }
        }
        if validate_arch(&s).is_ok() {
            prop_assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        }
    }

    #[test]
    fn real_names_are_accepted(id in valid_id(), arch in valid_arch()) {
        prop_assert!(validate_build_id(&id).is_ok(), "{id}");
        prop_assert!(validate_arch(&arch).is_ok(), "{arch}");
    }

    /// n builds on one day count up from the prefix without gaps; a day later the
    /// dated counter restarts at 0.
    #[test]
    fn versions_progress(
        prefix in "[0-9]{1,3}(\\.[0-9]{1,2})?",
        n in 1usize..20,
        dated in any::<bool>(),
        day in 1u32..28,
    ) {
        let p = if dated { format!("{prefix}.<date:%Y%m%d>") } else { prefix.clone() };
        let now = Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).single().ok_or_else(|| TestCaseError::fail("date"))?;
        let expanded = if dated { format!("{prefix}.2026-03-{day:02}").replace('-', "") } else { prefix.clone() };
        let mut last: Option<String> = None;
        for i in 0..n {
            let v = next_version(&p, None, last.as_deref(), now).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let want = match (dated, i) {
                (false, 0) => expanded.clone(),
                (false, i) => format!("{expanded}.{i}"),
                (true, i) => format!("{expanded}.{i}"),
            };
            prop_assert_eq!(&v, &want);
            last = Some(v);
        }
        if dated {
            let tomorrow = now + chrono::Duration::days(1);
            let v = next_version(&p, None, last.as_deref(), tomorrow).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            prop_assert!(v.ends_with(".0") && v != last.unwrap_or_default(), "{v}");
        }
    }

    /// Any prefix, suffix and previous version: an answer or an error, never a panic.
    #[test]
    fn version_logic_never_panics(
        prefix in "(\\PC|<date:%?\\PC{0,3}>?){0,6}",
        suffix in proptest::option::of("\\PC{0,2}"),
        last in proptest::option::of("\\PC{0,24}"),
    ) {
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().ok_or_else(|| TestCaseError::fail("date"))?;
        if let Ok(v) = next_version(&prefix, suffix.as_deref(), last.as_deref(), now) {
            prop_assert!(!v.is_empty() || prefix.is_empty());
        }
    }

    #[test]
    fn builds_json_round_trips(entries in proptest::collection::vec((valid_id(), valid_arch()), 0..12)) {
        let mut b = BuildsJson::default();
        for (id, arch) in &entries {
            b.insert(id, arch).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        }
        let bytes = b.to_json_bytes().map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let back = BuildsJson::parse(&bytes, "builds.json").map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(back.to_json_bytes().ok(), Some(bytes));
        for (id, arch) in &entries {
            prop_assert!(back.has(id, arch));
        }
    }

    #[test]
    fn meta_json_round_trips(
        id in valid_id(),
        arch in valid_arch(),
        images in proptest::collection::btree_map("[a-z][a-z0-9-]{0,10}", ("[a-z0-9][a-z0-9_-]{0,19}\\.raw", "[0-9a-f]{64}", any::<u32>()), 0..6),
    ) {
        let mut m = minimal_meta(&id, &arch);
        for (k, (path, sha256, size)) in images {
            m.images.insert(k, Artifact {
                path,
                sha256,
                size: Some(size.into()),
                uncompressed_sha256: None,
                uncompressed_size: None,
                skip_compression: None,
                extra: Default::default(),
            });
        }
        let bytes = m.to_json_bytes().map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let back = Meta::parse(&bytes, "meta.json").map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        prop_assert_eq!(back, m);
    }

    /// Arbitrary bytes, and JSON/YAML-shaped text, never make a parser panic.
    #[test]
    fn parsers_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        doc in "[a-z0-9{}\\[\\]:,&*!|>'\"\\n .-]{0,120}",
    ) {
        for input in [&bytes[..], doc.as_bytes()] {
            let _ = BuildsJson::parse(input, "builds.json");
            let _ = Meta::parse(input, "meta.json");
            if let Ok(text) = std::str::from_utf8(input) {
                let _ = ImageConfig::from_yaml(text, "image.yaml");
            }
        }
    }

    /// A treefile of arbitrary text (written to disk, as compose reads it) loads or
    /// fails with an error naming the file.
    #[test]
    fn treefile_load_never_panics(doc in "[a-z0-9{}\\[\\]:,&*!|>'\"\\n .-]{0,120}") {
        let td = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let p = crate::common::utf8(td.path()).map_err(|e| TestCaseError::fail(e.to_string()))?.join("manifest.yaml");
        std::fs::write(&p, &doc).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(e) = cosa::treefile::load(&p, "x86_64") {
            prop_assert!(format!("{e:#}").contains("manifest.yaml"), "{e:#}");
        }
    }
}
