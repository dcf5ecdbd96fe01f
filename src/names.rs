//! Names that become paths: build IDs, architecture names, artifact file names.
//!
//! A build ID or arch read from a builds.json, a meta.json, a store listing or the
//! command line is joined onto local and remote paths, so it is validated here, in
//! one place, before any path is built from it.

use thiserror::Error;

/// Longest build ID or arch we accept (coreos-assembler IDs are ~30 characters).
pub const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid {what} {name:?}: {why}")]
    Invalid {
        what: &'static str,
        name: String,
        why: &'static str,
    },
}

fn check(what: &'static str, name: &str) -> Result<(), NameError> {
    let bad = |why| {
        Err(NameError::Invalid {
            what,
            name: name.chars().take(MAX_NAME_LEN + 8).collect(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("too long");
    }
    if name.starts_with('.') {
        return bad("starts with '.'");
    }
    if name.contains("..") {
        return bad("contains '..'");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("contains a path separator");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    if name.chars().any(char::is_whitespace) {
        return bad("contains white space");
    }
    if name == "latest" || name == "builds.json" {
        return bad("is a reserved name");
    }
    Ok(())
}

/// Validate a build ID (e.g. `43.20260411.20.dev0`): it names `builds/<id>/`.
pub fn validate_build_id(id: &str) -> Result<(), NameError> {
    check("build ID", id)
}

/// Validate an architecture name (`x86_64`, `aarch64`, ...): it names `builds/<id>/<arch>/`.
pub fn validate_arch(arch: &str) -> Result<(), NameError> {
    check("arch", arch)?;
    if !arch
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(NameError::Invalid {
            what: "arch",
            name: arch.to_string(),
            why: "only letters, digits, '_' and '-' are allowed",
        });
    }
    Ok(())
}

/// Validate a single file name taken from a meta.json `images.*.path` or a store listing:
/// it must name a file directly inside the build's arch directory.
pub fn validate_file_name(name: &str) -> Result<(), NameError> {
    check("file name", name)
}

/// The architecture of this machine, in RPM/coreos-assembler spelling (`basearch`).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The artifact file name coreos-assembler uses: `<name>-<id>-<platform>.<arch>.<ext>`,
/// e.g. `fedora-coreos-31.20200310.20.0-qemu.x86_64.qcow2`. Every artifact name in
/// this project comes from here.
pub fn artifact_name(name: &str, build_id: &str, platform: &str, arch: &str, ext: &str) -> String {
    format!("{name}-{build_id}-{platform}.{arch}.{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_ids() {
        for id in [
            "31.20200310.20.0",
            "43.20260411.20.dev0",
            "44devel.81.202001151926.0",
            "1.0-1",
            "a",
        ] {
            validate_build_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }

    #[test]
    fn traversal_and_junk_refused() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for id in [
            "",
            "..",
            "../etc",
            "a/../b",
            "a/b",
            "/abs",
            ".hidden",
            "a\0b",
            "a\nb",
            "a\u{1b}b",
            "a b",
            "latest",
            "x..y",
            "a\\b",
            long.as_str(),
        ] {
            assert!(validate_build_id(id).is_err(), "{id:?} accepted");
        }
        assert!(validate_arch("x86_64").is_ok());
        assert!(validate_arch("x86:64").is_err());
        assert!(validate_arch("../x86_64").is_err());
    }

    #[test]
    fn artifact_names_are_coreos_assemblers() {
        assert_eq!(
            artifact_name(
                "fedora-coreos",
                "31.20200310.20.0",
                "qemu",
                "x86_64",
                "qcow2"
            ),
            "fedora-coreos-31.20200310.20.0-qemu.x86_64.qcow2"
        );
    }
}
